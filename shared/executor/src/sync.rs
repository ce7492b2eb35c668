//! Locking that survives a panic elsewhere.
//!
//! Every mutex in Switchyard guards a map or a list that each critical
//! section leaves consistent (an insert, a remove, a read). A panic in some
//! other code while the lock was held says nothing about that data, so a
//! poisoned lock is taken anyway: refusing it would make every later call
//! fail silently — an RPC whose reply waiter was never registered times out
//! without a word.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `mutex`, poisoned or not.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_poisoned_by_a_panic_elsewhere_is_still_taken() {
        let shared = std::sync::Arc::new(Mutex::new(vec![1]));
        let poisoner = std::sync::Arc::clone(&shared);
        let _ = std::thread::spawn(move || {
            let _held = poisoner.lock();
            panic!("elsewhere");
        })
        .join();
        assert!(shared.is_poisoned());
        lock(&shared).push(2);
        assert_eq!(*lock(&shared), [1, 2]);
    }
}
