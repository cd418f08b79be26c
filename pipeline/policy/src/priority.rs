//! Priority: when several marketing rules fire for one customer at once
//! (the same batch, or within the configured window of an earlier winner),
//! the highest priority wins and the others lose to it. Ties go to the
//! rule that sorts first by name, so the outcome never depends on arrival
//! order. Transactional messages are never in conflict.

/// One firing competing for a customer's attention.
#[derive(Debug, Clone, PartialEq)]
pub struct Contender<'a> {
    /// Customer.
    pub customer_id: &'a str,
    /// Rule name.
    pub rule: &'a str,
    /// Rule priority (higher wins).
    pub priority: i64,
    /// Transactional messages do not compete.
    pub transactional: bool,
}

/// The outcome for each contender, in input order: `None` when it goes on,
/// `Some(winner rule)` when it lost.
pub fn resolve<'a>(contenders: &[Contender<'a>]) -> Vec<Option<&'a str>> {
    let mut best: std::collections::HashMap<&str, (i64, &str)> = std::collections::HashMap::new();
    for c in contenders.iter().filter(|c| !c.transactional) {
        let e = best.entry(c.customer_id).or_insert((c.priority, c.rule));
        if (c.priority, std::cmp::Reverse(c.rule)) > (e.0, std::cmp::Reverse(e.1)) {
            *e = (c.priority, c.rule);
        }
    }
    contenders
        .iter()
        .map(|c| {
            if c.transactional {
                return None;
            }
            let (_, winner) = best[c.customer_id];
            (winner != c.rule).then_some(winner)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c<'a>(customer: &'a str, rule: &'a str, priority: i64) -> Contender<'a> {
        Contender {
            customer_id: customer,
            rule,
            priority,
            transactional: false,
        }
    }

    #[test]
    fn the_highest_priority_wins_per_customer_in_any_order() {
        let a = [
            c("c1", "browse", 40),
            c("c1", "cart", 60),
            c("c2", "browse", 40),
        ];
        assert_eq!(resolve(&a), vec![Some("cart"), None, None]);
        let b = [
            c("c2", "browse", 40),
            c("c1", "cart", 60),
            c("c1", "browse", 40),
        ];
        assert_eq!(resolve(&b), vec![None, None, Some("cart")]);
    }

    #[test]
    fn ties_go_to_the_first_name_and_transactional_never_competes() {
        let mut t = c("c1", "order_confirmation", 0);
        t.transactional = true;
        let a = [c("c1", "win_back", 10), c("c1", "anniversary", 10), t];
        assert_eq!(resolve(&a), vec![Some("anniversary"), None, None]);
    }
}
