-- name: ticket_followup
-- description: Ask how it went a while after a support ticket is closed.
-- channel: email
-- template: ticket_followup
-- priority: 50
-- cadence: 15m
-- split: holdout=10 triggered=90
-- param delay: 1d

SELECT customer_id,
       'ticket:' || COALESCE(last_ticket_id, CAST(last_ticket_closed_at AS VARCHAR)) AS dedupe_key,
       last_ticket_closed_at + ${delay} AS due_at,
       last_ticket_id AS ticket_id
FROM customers
WHERE last_ticket_closed_at IS NOT NULL
  AND last_ticket_closed_at + ${delay} <= ${now}
