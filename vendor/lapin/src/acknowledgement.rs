use crate::{
    Error, Promise, PromiseResolver,
    id_sequence::IdSequence,
    protocol::{AMQPError, AMQPSoftError},
    publisher_confirm::{Confirmation, PublisherConfirm},
    returned_messages::ReturnedMessages,
    shared::SharedMutex,
    types::DeliveryTag,
};
use std::{collections::HashMap, fmt, sync::MutexGuard};
use tracing::trace;

#[derive(Clone)]
pub(crate) struct Acknowledgements(SharedMutex<Inner>);

type AMQPResult = Result<(), AMQPError>;

impl Acknowledgements {
    pub(crate) fn new(channel_id: u16, returned_messages: ReturnedMessages) -> Self {
        Self(SharedMutex::new(Inner::new(channel_id, returned_messages)))
    }

    pub(crate) fn register_pending(&self) -> PublisherConfirm {
        self.lock_inner().register_pending()
    }

    pub(crate) fn get_last_pending(&self) -> Option<Promise<()>> {
        self.lock_inner().last.take()
    }

    // Switchyard's patch (vendor/lapin/SWITCHYARD.md): confirms are settled
    // under the lock and their promises resolved (their publishers woken)
    // after it is released, so a publisher woken on this core cannot keep
    // the I/O thread, and every other publish on the channel, waiting for
    // the lock.
    pub(crate) fn ack(&self, delivery_tag: DeliveryTag) -> AMQPResult {
        let settled = self.lock_inner().drop_pending(delivery_tag, true)?;
        settled.resolve();
        Ok(())
    }

    pub(crate) fn nack(&self, delivery_tag: DeliveryTag) -> AMQPResult {
        let settled = self.lock_inner().drop_pending(delivery_tag, false)?;
        settled.resolve();
        Ok(())
    }

    pub(crate) fn ack_all_pending(&self) {
        let settled = self.lock_inner().drop_all(true);
        settled.into_iter().for_each(Settled::resolve);
    }

    pub(crate) fn nack_all_pending(&self) {
        let settled = self.lock_inner().drop_all(false);
        settled.into_iter().for_each(Settled::resolve);
    }

    pub(crate) fn ack_all_before(&self, delivery_tag: DeliveryTag) -> AMQPResult {
        let (settled, result) = self
            .lock_inner()
            .complete_pending_before(delivery_tag, true);
        settled.into_iter().for_each(Settled::resolve);
        result
    }

    pub(crate) fn nack_all_before(&self, delivery_tag: DeliveryTag) -> AMQPResult {
        let (settled, result) = self
            .lock_inner()
            .complete_pending_before(delivery_tag, false);
        settled.into_iter().for_each(Settled::resolve);
        result
    }

    pub(crate) fn on_channel_error(&self, error: Error) {
        self.lock_inner().on_channel_error(error);
    }

    pub(crate) fn reset(&self, error: Error) {
        self.lock_inner().reset(error);
    }

    fn lock_inner(&self) -> MutexGuard<'_, Inner> {
        self.0.lock()
    }
}

impl fmt::Debug for Acknowledgements {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("Acknowledgements");
        if let Some(inner) = self.0.try_lock() {
            debug
                .field("delivery_tag", &inner.delivery_tag)
                .field("returned_messages", &inner.returned_messages)
                .field("pending", &inner.pending.keys());
        }
        debug.finish()
    }
}

/// A confirm settled under the lock: its promises, resolved once the lock
/// is released (Switchyard's patch).
struct Settled {
    resolvers: (PromiseResolver<Confirmation>, PromiseResolver<()>),
    confirmation: Confirmation,
    /// Whether it was the last publish so far (`wait_for_confirms`).
    last: bool,
}

impl Settled {
    fn resolve(self) {
        self.resolvers.0.resolve(self.confirmation);
        if self.last {
            self.resolvers.1.resolve(());
        }
    }
}

struct Inner {
    channel_id: u16,
    delivery_tag: IdSequence<DeliveryTag>,
    last: Option<Promise<()>>,
    pending: HashMap<DeliveryTag, (PromiseResolver<Confirmation>, PromiseResolver<()>)>,
    returned_messages: ReturnedMessages,
}

impl Inner {
    fn new(channel_id: u16, returned_messages: ReturnedMessages) -> Self {
        Self {
            channel_id,
            delivery_tag: IdSequence::new(false),
            last: None,
            pending: HashMap::default(),
            returned_messages,
        }
    }

    fn register_pending(&mut self) -> PublisherConfirm {
        let delivery_tag = self.delivery_tag.next();
        trace!("Publishing with delivery_tag {}", delivery_tag);
        let (promise, resolver) = Promise::new("acknowledgement");
        let (err_promise, err_resolver) = Promise::new("acknowledgement-error");
        let promise = PublisherConfirm::new(promise, self.returned_messages.clone());
        self.last = Some(err_promise);
        self.pending.insert(delivery_tag, (resolver, err_resolver));
        promise
    }

    fn complete_pending(
        &mut self,
        success: bool,
        delivery_tag: DeliveryTag,
        resolvers: (PromiseResolver<Confirmation>, PromiseResolver<()>),
    ) -> Settled {
        let returned_message = self.returned_messages.get_waiting_message();
        Settled {
            confirmation: if success {
                Confirmation::Ack(returned_message)
            } else {
                Confirmation::Nack(returned_message)
            },
            last: Some(delivery_tag) == self.delivery_tag.current(),
            resolvers,
        }
    }

    fn drop_all(&mut self, success: bool) -> Vec<Settled> {
        std::mem::take(&mut self.pending)
            .into_iter()
            .map(|(delivery_tag, resolvers)| {
                self.complete_pending(success, delivery_tag, resolvers)
            })
            .collect()
    }

    fn drop_pending(
        &mut self,
        delivery_tag: DeliveryTag,
        success: bool,
    ) -> Result<Settled, AMQPError> {
        if let Some(resolvers) = self.pending.remove(&delivery_tag) {
            Ok(self.complete_pending(success, delivery_tag, resolvers))
        } else {
            Err(AMQPError::new(
                AMQPSoftError::PRECONDITIONFAILED.into(),
                format!(
                    "invalid {} received for inexistant delivery_tag {} on channel {}, current is {:?}, was expecting one of {:?}",
                    if success { "ack" } else { "nack" },
                    delivery_tag,
                    self.channel_id,
                    self.delivery_tag.current(),
                    self.pending.keys()
                )
                .into(),
            ))
        }
    }

    fn complete_pending_before(
        &mut self,
        delivery_tag: DeliveryTag,
        success: bool,
    ) -> (Vec<Settled>, AMQPResult) {
        // Tags are collected from self.pending, so drop_pending should never fail here.
        // Multiple errors are unlikely, and if they occur they are likely identical; callers
        // also handle the underlying acknowledgement state independently, so returning the
        // last error is sufficient.
        let mut res = Ok(());
        let mut settled = Vec::new();
        for tag in self
            .pending
            .keys()
            .filter(|tag| **tag <= delivery_tag)
            .cloned()
            .collect::<Vec<DeliveryTag>>()
        {
            match self.drop_pending(tag, success) {
                Ok(one) => settled.push(one),
                Err(err) => res = Err(err),
            }
        }
        (settled, res)
    }

    fn on_channel_error(&mut self, error: Error) {
        for (delivery_tag, resolvers) in self.pending.drain() {
            resolvers.0.reject(error.clone());
            if Some(delivery_tag) == self.delivery_tag.current() {
                resolvers.1.reject(error.clone());
            }
        }
        self.returned_messages.clear_dropped_confirms();
    }

    fn reset(&mut self, error: Error) {
        self.delivery_tag = IdSequence::new(false);
        self.on_channel_error(error);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{
        future::Future,
        pin::pin,
        sync::{Arc, Mutex},
        task::{Context, Poll, Wake, Waker},
    };

    /// A waker that notes, each time it is woken, whether the
    /// acknowledgements' lock was held.
    struct Probe {
        acknowledgements: Acknowledgements,
        locked_when_woken: Mutex<Vec<bool>>,
    }

    impl Wake for Probe {
        fn wake(self: Arc<Self>) {
            let locked = self.acknowledgements.0.try_lock().is_none();
            self.locked_when_woken.lock().unwrap().push(locked);
        }
    }

    fn woken_by(settle: impl FnOnce(&Acknowledgements)) -> Vec<bool> {
        let acknowledgements = Acknowledgements::new(1, ReturnedMessages::default());
        let probe = Arc::new(Probe {
            acknowledgements: acknowledgements.clone(),
            locked_when_woken: Mutex::new(Vec::new()),
        });
        let waker = Waker::from(probe.clone());
        let mut confirm = pin!(acknowledgements.register_pending());
        let pending = confirm.as_mut().poll(&mut Context::from_waker(&waker));
        assert!(pending.is_pending());
        settle(&acknowledgements);
        assert!(matches!(
            confirm.poll(&mut Context::from_waker(&waker)),
            Poll::Ready(Ok(_))
        ));
        probe.locked_when_woken.lock().unwrap().clone()
    }

    // Switchyard's patch (SWITCHYARD.md).
    #[test]
    fn a_publisher_is_woken_after_the_acknowledgements_lock_is_released() {
        assert_eq!(woken_by(|acks| acks.ack(1).unwrap()), [false]);
        assert_eq!(woken_by(|acks| acks.nack(1).unwrap()), [false]);
        assert_eq!(woken_by(|acks| acks.ack_all_before(1).unwrap()), [false]);
        assert_eq!(woken_by(Acknowledgements::ack_all_pending), [false]);
    }
}
