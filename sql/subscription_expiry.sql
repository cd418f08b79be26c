-- name: subscription_expiry
-- description: Remind a subscriber the given time before the subscription expires (renewals move the date).
-- channel: email
-- template: subscription_expiry
-- priority: 75
-- cadence: hourly
-- split: holdout=10 triggered=90
-- param before: 7d

SELECT customer_id,
       COALESCE(subscription_id, 'subscription') || ':' || CAST(CAST(subscription_expires_at AS DATE) AS VARCHAR) AS dedupe_key,
       subscription_expires_at - ${before} AS due_at,
       subscription_id,
       subscription_expires_at
FROM customers
WHERE subscription_expires_at IS NOT NULL
  AND subscription_expires_at - ${before} <= ${now}
  AND subscription_expires_at > ${now}
