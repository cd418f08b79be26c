-- name: shipping_update
-- description: Tell the customer their order shipped ("Order Shipped" events).
-- channel: preferred
-- template: shipping_update
-- priority: 90
-- cadence: batch
-- transactional: true
-- split: triggered=100

SELECT customer_id,
       'shipped:' || COALESCE(order_id, event_id) AS dedupe_key,
       min(timestamp) AS due_at,
       max(order_id) AS order_id
FROM batch_events
WHERE event_type = 'order_shipped'
GROUP BY customer_id, COALESCE(order_id, event_id)
