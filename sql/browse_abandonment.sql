-- name: browse_abandonment
-- description: The same product viewed at least min_views times in 7 days and no purchase within the delay after the last view.
-- channel: push
-- template: browse_abandonment
-- priority: 40
-- cooldown: 3d
-- lookback: 7d
-- cadence: 15m
-- cancel_on: purchase
-- on_cap: skip
-- split: holdout=10 scheduled=20 triggered=70
-- param min_views: 3
-- param delay: 2h

-- Once per product and week of the last view.
SELECT customer_id,
       product_id || ':' || CAST(CAST(date_trunc('week', last_viewed_at) AS DATE) AS VARCHAR) AS dedupe_key,
       last_viewed_at + ${delay} AS due_at,
       product_id,
       views_7d
FROM product_views
WHERE views_7d >= ${min_views}
  AND last_viewed_at + ${delay} <= ${now}
  AND (purchased_at IS NULL OR purchased_at > last_viewed_at + ${delay})
