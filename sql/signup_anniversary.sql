-- name: signup_anniversary
-- description: Celebrate each yearly anniversary of the signup.
-- channel: preferred
-- template: signup_anniversary
-- priority: 30
-- cadence: hourly
-- split: holdout=10 triggered=90

-- The anniversary is the signup's month and day (UTC) in the clock's year;
-- 29 February signups celebrate on 28 February in non-leap years. Local send
-- times are the policy stage's job (scheduled arm, quiet hours).
WITH dates AS (
  SELECT customer_id,
         date_part('year', ${now}) - date_part('year', signed_up_at) AS years,
         make_date(CAST(date_part('year', ${now}) AS INT),
                   CAST(date_part('month', signed_up_at) AS INT),
                   CAST(CASE WHEN date_part('month', signed_up_at) = 2 AND date_part('day', signed_up_at) = 29
                              AND date_part('day', make_date(CAST(date_part('year', ${now}) AS INT), 3, 1) - INTERVAL '1' DAY) = 28
                             THEN 28 ELSE date_part('day', signed_up_at) END AS INT)) AS day
  FROM customers
  WHERE signed_up_at IS NOT NULL
)
SELECT customer_id,
       'anniversary:' || CAST(CAST(years AS BIGINT) AS VARCHAR) AS dedupe_key,
       CAST(day AS TIMESTAMP) AS due_at,
       CAST(years AS BIGINT) AS years
FROM dates
WHERE years >= 1
  AND CAST(day AS TIMESTAMP) <= ${now}
