-- name: loyalty_tier_upgrade
-- description: Congratulate a customer whose loyalty tier went up.
-- channel: preferred
-- template: loyalty_tier_upgrade
-- priority: 70
-- cadence: batch
-- split: holdout=10 triggered=90

-- Tiers in order; a first tier (no old value) or a downgrade is not an upgrade.
SELECT customer_id,
       'tier:' || trim(new_value, '"') AS dedupe_key,
       changed_at AS due_at,
       trim(old_value, '"') AS old_tier,
       trim(new_value, '"') AS new_tier
FROM profile_changes
WHERE trait = 'loyalty_tier'
  AND old_value IS NOT NULL
  AND (CASE trim(new_value, '"') WHEN 'bronze' THEN 1 WHEN 'silver' THEN 2 WHEN 'gold' THEN 3 WHEN 'platinum' THEN 4 ELSE 0 END)
    > (CASE trim(old_value, '"') WHEN 'bronze' THEN 1 WHEN 'silver' THEN 2 WHEN 'gold' THEN 3 WHEN 'platinum' THEN 4 ELSE 0 END)
