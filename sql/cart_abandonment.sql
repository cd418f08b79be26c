-- name: cart_abandonment
-- description: Items added to the cart and no purchase within the delay; once per cart.
-- channel: email
-- template: cart_abandonment
-- priority: 60
-- cooldown: 24h
-- lookback: 7d
-- cadence: 5m
-- cancel_on: purchase
-- split: holdout=10 scheduled=20 triggered=70
-- scheduled_at: 10:00
-- param delay: 1h

-- A cart is the run of cart adds up to the next purchase (`carts`). The
-- deadline runs from the last add; a purchase after the deadline does not
-- undo a reminder that was already due.
SELECT customer_id,
       cart_id AS dedupe_key,
       updated_at + ${delay} AS due_at,
       cart_value,
       items,
       last_product_id
FROM carts
WHERE updated_at + ${delay} <= ${now}
  AND (purchased_at IS NULL OR purchased_at > updated_at + ${delay})
