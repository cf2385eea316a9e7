//! Events to containerd, published in order by one thread so that a slow
//! containerd never holds up a task request.

use std::sync::mpsc;
use std::time::Duration;

use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::Context;
use log::warn;

enum Item {
    Event(&'static str, Box<dyn MessageDyn + Send>),
    Flush(mpsc::Sender<()>),
}

pub struct Events {
    tx: mpsc::Sender<Item>,
}

impl Events {
    pub fn start(publisher: RemotePublisher, namespace: String) -> Events {
        let (tx, rx) = mpsc::channel::<Item>();
        std::thread::Builder::new()
            .name("events".into())
            .spawn(move || {
                for item in rx {
                    match item {
                        Item::Event(topic, ev) => {
                            if let Err(e) =
                                publisher.publish(Context::default(), topic, &namespace, ev)
                            {
                                warn!("cannot publish {topic}: {e}");
                            }
                        }
                        Item::Flush(done) => {
                            let _ = done.send(());
                        }
                    }
                }
            })
            .expect("spawn events thread");
        Events { tx }
    }

    pub fn publish(&self, topic: &'static str, ev: impl MessageDyn + 'static) {
        let _ = self.tx.send(Item::Event(topic, Box::new(ev)));
    }

    /// Waits (a bounded time) until everything queued so far was sent.
    pub fn flush(&self, timeout: Duration) {
        let (done, wait) = mpsc::channel();
        if self.tx.send(Item::Flush(done)).is_ok() {
            let _ = wait.recv_timeout(timeout);
        }
    }
}
