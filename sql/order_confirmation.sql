-- name: order_confirmation
-- description: Confirm every order at once.
-- channel: email
-- template: order_confirmation
-- priority: 100
-- cadence: batch
-- transactional: true
-- split: triggered=100

SELECT customer_id,
       'order:' || COALESCE(order_id, event_id) AS dedupe_key,
       min(timestamp) AS due_at,
       max(revenue) AS revenue,
       max(currency) AS currency
FROM batch_events
WHERE event_type = 'purchase'
GROUP BY customer_id, COALESCE(order_id, event_id)
