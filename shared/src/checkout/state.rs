//! The checkout state machine (DESIGN §4, invariant 4): the one place that says which
//! transition is allowed. Redis applies a transition only as a compare-and-set from the
//! states this module names as its sources.

use std::fmt;

/// Where a checkout session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum State {
    /// The session exists; nothing is held yet.
    Created,
    /// The cart is locked, the quote frozen, the stock held.
    Locked,
    /// A payment intent exists; waiting for the gateway.
    PaymentPending,
    /// The gateway confirmed the payment; the order is being written.
    PaymentConfirmed,
    /// The order is in PostgreSQL; Redis is being committed.
    OrderCreated,
    /// Done: stock sold, cart emptied, lock released.
    Completed,
    /// Cancelled by the customer; holds and lock released.
    Cancelled,
    /// Past its deadline before payment; holds and lock released.
    Expired,
    /// The payment failed, or PostgreSQL refused the order for want of stock (the payment
    /// is refunded); holds and lock released.
    Failed,
}

/// Every state, in flow order (tests and parsing).
pub const ALL: [State; 9] = [
    State::Created,
    State::Locked,
    State::PaymentPending,
    State::PaymentConfirmed,
    State::OrderCreated,
    State::Completed,
    State::Cancelled,
    State::Expired,
    State::Failed,
];

impl State {
    /// The name stored in Redis and shown by the API.
    pub fn name(self) -> &'static str {
        match self {
            State::Created => "CREATED",
            State::Locked => "LOCKED",
            State::PaymentPending => "PAYMENT_PENDING",
            State::PaymentConfirmed => "PAYMENT_CONFIRMED",
            State::OrderCreated => "ORDER_CREATED",
            State::Completed => "COMPLETED",
            State::Cancelled => "CANCELLED",
            State::Expired => "EXPIRED",
            State::Failed => "FAILED",
        }
    }

    /// Parses a stored name.
    pub fn parse(name: &str) -> Option<State> {
        ALL.into_iter().find(|s| s.name() == name)
    }

    /// No transition leaves a terminal state.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            State::Completed | State::Cancelled | State::Expired | State::Failed
        )
    }

    /// Ended without an order (CANCELLED, EXPIRED, FAILED): what such an end holds is
    /// released (its holds and lock freed, its intent cancelled unless paid).
    pub fn is_ended_without_order(self) -> bool {
        matches!(self, State::Cancelled | State::Expired | State::Failed)
    }

    /// Before the payment is confirmed, a session can still be cancelled, expire or fail;
    /// from confirmation on, money has moved and the order must be written.
    pub fn is_before_payment(self) -> bool {
        matches!(self, State::Created | State::Locked | State::PaymentPending)
    }

    /// Whether `self → to` is a transition of the machine.
    pub fn can_move_to(self, to: State) -> bool {
        use State::*;
        match (self, to) {
            (Created, Locked)
            | (Locked, PaymentPending)
            | (PaymentPending, PaymentConfirmed)
            | (PaymentConfirmed, OrderCreated)
            | (OrderCreated, Completed) => true,
            // Ending early releases holds and lock; only possible before payment.
            (from, Cancelled | Expired | Failed) if from.is_before_payment() => true,
            // Paid, but on-hand could not cover the order: no order, the payment refunded.
            (PaymentConfirmed, Failed) => true,
            _ => false,
        }
    }

    /// The states from which `to` may be reached: what the compare-and-set accepts.
    pub fn sources(to: State) -> Vec<State> {
        ALL.into_iter().filter(|from| from.can_move_to(to)).collect()
    }

    /// The states before payment ([`State::is_before_payment`]): those in which a session
    /// past its deadline expires, whichever session script meets it.
    pub fn before_payment() -> Vec<State> {
        ALL.into_iter().filter(|s| s.is_before_payment()).collect()
    }
}

/// States as the session scripts take them: their names joined by `,`.
pub fn joined(states: &[State]) -> String {
    let names: Vec<&str> = states.iter().map(|s| s.name()).collect();
    names.join(",")
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_scripts_are_told_the_states_before_payment() {
        assert_eq!(joined(&State::before_payment()), "CREATED,LOCKED,PAYMENT_PENDING");
        assert_eq!(joined(&State::sources(State::OrderCreated)), "PAYMENT_CONFIRMED");
    }

    #[test]
    fn the_happy_path_is_the_only_way_to_completed() {
        let path = [
            State::Created,
            State::Locked,
            State::PaymentPending,
            State::PaymentConfirmed,
            State::OrderCreated,
            State::Completed,
        ];
        for pair in path.windows(2) {
            assert!(pair[0].can_move_to(pair[1]), "{} → {}", pair[0], pair[1]);
        }
        assert_eq!(State::sources(State::Completed), vec![State::OrderCreated]);
    }

    #[test]
    fn the_transition_table_is_exactly_this() {
        use State::*;
        let allowed: Vec<(State, State)> = ALL
            .into_iter()
            .flat_map(|a| ALL.into_iter().map(move |b| (a, b)))
            .filter(|(a, b)| a.can_move_to(*b))
            .collect();
        let mut expected = vec![
            (Created, Locked),
            (Locked, PaymentPending),
            (PaymentPending, PaymentConfirmed),
            (PaymentConfirmed, OrderCreated),
            (OrderCreated, Completed),
        ];
        for from in [Created, Locked, PaymentPending] {
            for to in [Cancelled, Expired, Failed] {
                expected.push((from, to));
            }
        }
        expected.push((PaymentConfirmed, Failed));
        let mut allowed_sorted = allowed.clone();
        allowed_sorted.sort();
        expected.sort();
        assert_eq!(allowed_sorted, expected);
    }

    #[test]
    fn nothing_leaves_a_terminal_state_and_nothing_goes_back() {
        for from in ALL {
            for to in ALL {
                if from.is_terminal() {
                    assert!(!from.can_move_to(to), "{from} → {to}");
                }
                if from.can_move_to(to) && !to.is_terminal() {
                    assert!(to > from, "{from} → {to} goes back");
                }
                assert!(!from.can_move_to(from), "{from} → itself");
            }
        }
    }

    #[test]
    fn names_round_trip() {
        for s in ALL {
            assert_eq!(State::parse(s.name()), Some(s));
        }
        assert_eq!(State::parse("PAID"), None);
    }

    proptest! {
        /// Any sequence of attempted transitions, applied by the rule, ends in a state
        /// reachable on the machine, passes payment confirmation at most once, never
        /// reaches COMPLETED without passing ORDER_CREATED, and never fails after its
        /// order was written.
        #[test]
        fn random_walks_respect_the_machine(steps in proptest::collection::vec(0usize..9, 0..40)) {
            let mut state = State::Created;
            let mut seen = vec![state];
            for step in steps {
                let to = ALL[step];
                if state.can_move_to(to) {
                    state = to;
                    seen.push(state);
                }
            }
            let confirmations = seen.iter().filter(|s| **s == State::PaymentConfirmed).count();
            prop_assert!(confirmations <= 1);
            if seen.contains(&State::Completed) {
                prop_assert!(seen.contains(&State::OrderCreated));
                prop_assert_eq!(*seen.last().unwrap(), State::Completed);
            }
            // A paid session never ends as cancelled or expired; it fails only when
            // PostgreSQL refused its order, and then no order exists.
            if seen.contains(&State::PaymentConfirmed) {
                prop_assert!(!seen.iter().any(|s| matches!(s, State::Cancelled | State::Expired)));
                if seen.contains(&State::Failed) {
                    prop_assert!(!seen.contains(&State::OrderCreated));
                }
            }
        }
    }
}
