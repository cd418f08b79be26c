-- name: win_back
-- description: A customer who has bought before has not been seen for the inactivity period.
-- channel: email
-- template: win_back
-- priority: 20
-- cooldown: 30d
-- cadence: hourly
-- cancel_on: purchase
-- split: holdout=20 scheduled=40 triggered=40
-- param inactive: 30d
-- step 1: after=7d template=win_back_last_chance

-- One per stretch of inactivity: the key is the day of the last visit.
SELECT customer_id,
       'winback:' || CAST(CAST(last_seen_at AS DATE) AS VARCHAR) AS dedupe_key,
       last_seen_at + ${inactive} AS due_at,
       orders,
       lifetime_value,
       top_category
FROM customers
WHERE orders >= 1
  AND last_seen_at + ${inactive} <= ${now}
