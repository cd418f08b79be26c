-- name: welcome
-- description: Welcome a new customer the moment they sign up.
-- channel: preferred
-- template: welcome
-- priority: 80
-- cadence: batch
-- split: holdout=10 scheduled=20 triggered=70
-- scheduled_at: 10:00
-- cancel_on: purchase
-- step 1: after=3d channel=sms template=welcome_first_order
-- step 2: after=7d template=welcome_best_sellers

-- The key is constant: one welcome per customer however many signup
-- events arrive (client retries, a second device). The engine forgets a
-- firing after rules.dedupe_horizon (400 days); a signup after that fires
-- again, and delivery, which never sends one send id twice, still sends
-- no second welcome.
SELECT e.customer_id,
       'welcome' AS dedupe_key,
       min(e.timestamp) AS due_at,
       max(p.first_name) AS first_name
FROM batch_events e
LEFT JOIN profiles p ON p.customer_id = e.customer_id
WHERE e.event_type = 'signup'
GROUP BY e.customer_id
