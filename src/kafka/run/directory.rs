//! Which instance of an app owns which partitions, and where its HTTP
//! listener is: what Kafka Streams' interactive queries take from
//! `application.server`. Each instance writes its entry (keyed by its
//! instance id) to the compacted topic `<app.id>-__instances` whenever its
//! assignment changes, and reads every entry, so that any instance can
//! forward a state query to the owner of the key's partition.
//!
//! It runs on a thread of its own with a plain consumer (assigned, no
//! group) and an idempotent producer: the processing loop only hands it
//! its partitions, and never waits for it.

use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::duration::now_ms;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use super::clients::RestoreContext;
use super::RunError;

/// An instance's entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Where its HTTP listener answers (`host:port`).
    pub address: String,
    pub partitions: Vec<i32>,
    /// When it wrote the entry (ms): the newer of two claims on a partition
    /// wins (an instance that died without saying so keeps its old entry).
    pub at: u64,
}

/// The directory as this instance knows it.
#[derive(Clone, Default)]
pub struct Directory {
    entries: Arc<RwLock<HashMap<String, Entry>>>,
}

impl Directory {
    /// The address of the instance that claims `partition` last, if any.
    pub fn owner(&self, partition: i32) -> Option<(String, String)> {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        entries
            .iter()
            .filter(|(_, e)| e.partitions.contains(&partition))
            .max_by_key(|(_, e)| e.at)
            .map(|(id, e)| (id.clone(), e.address.clone()))
    }

    fn apply(&self, id: String, entry: Option<Entry>) {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        match entry {
            Some(e) => entries.insert(id, e),
            None => entries.remove(&id),
        };
    }
}

/// The thread that keeps the directory and publishes this instance's entry:
/// the partitions of all its processing threads.
pub struct Publisher {
    tx: Option<mpsc::Sender<Vec<i32>>>,
    thread: Option<JoinHandle<()>>,
    /// Each processing thread's partitions, as it last said.
    owned: std::sync::Mutex<std::collections::BTreeMap<usize, Vec<i32>>>,
}

impl Publisher {
    /// Creates the topic if missing and starts reading and publishing.
    pub fn start(
        base: &ClientConfig,
        app_id: &str,
        instance: &str,
        address: String,
        directory: Directory,
    ) -> Result<Publisher, RunError> {
        let topic = format!("{app_id}-__instances");
        create_topic(base, &topic)?;
        let consumer: BaseConsumer<RestoreContext> = base
            .clone()
            // librdkafka wants a group to assign partitions; it is never
            // joined and nothing is committed to it: the restorer's, which
            // needs no ACL (its context takes a refusal as expected).
            .set("group.id", format!("{app_id}-restore"))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .create_with_context(RestoreContext::default())
            .map_err(|e| RunError::kafka("create the directory consumer", e))?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, 0, Offset::Beginning)
            .map_err(|e| RunError::kafka("assign the directory", e))?;
        consumer
            .assign(&tpl)
            .map_err(|e| RunError::kafka("assign the directory", e))?;
        let producer: BaseProducer = base
            .clone()
            .set("enable.idempotence", "true")
            .create()
            .map_err(|e| RunError::kafka("create the directory producer", e))?;
        let (tx, rx) = mpsc::channel::<Vec<i32>>();
        let me = Me {
            topic,
            instance: instance.to_owned(),
            address,
        };
        let thread = std::thread::Builder::new()
            .name("sluice-directory".into())
            .spawn(move || serve(consumer, producer, rx, me, directory))
            .map_err(|e| RunError::Setup(format!("cannot start the directory thread: {e}")))?;
        Ok(Publisher {
            tx: Some(tx),
            thread: Some(thread),
            owned: Default::default(),
        })
    }

    /// Processing thread `thread` now owns `partitions` (empty while
    /// rebalancing); the entry says what all the threads own.
    pub fn publish(&self, thread: usize, partitions: Vec<i32>) {
        let mut owned = self.owned.lock().unwrap_or_else(|p| p.into_inner());
        owned.insert(thread, partitions);
        let mut all: Vec<i32> = owned.values().flatten().copied().collect();
        all.sort_unstable();
        all.dedup();
        if let Some(tx) = &self.tx {
            let _ = tx.send(all);
        }
    }
}

impl Drop for Publisher {
    /// Takes this instance's entry out of the directory, then stops.
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Me {
    topic: String,
    instance: String,
    address: String,
}

fn serve(
    consumer: BaseConsumer<RestoreContext>,
    producer: BaseProducer,
    rx: mpsc::Receiver<Vec<i32>>,
    me: Me,
    directory: Directory,
) {
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(partitions) => {
                let entry = Entry {
                    address: me.address.clone(),
                    partitions,
                    at: now_ms(),
                };
                // Known at once here, whatever the topic says later.
                directory.apply(me.instance.clone(), Some(entry.clone()));
                send(&producer, &me, Some(&entry));
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        while let Some(Ok(m)) = consumer.poll(Duration::ZERO) {
            let Some(id) = m.key().and_then(|k| std::str::from_utf8(k).ok()) else {
                continue;
            };
            let entry = m.payload().and_then(|v| serde_json::from_slice(v).ok());
            directory.apply(id.to_owned(), entry);
        }
        producer.poll(Duration::ZERO);
    }
    send(&producer, &me, None);
    let _ = producer.flush(Duration::from_secs(5));
}

fn send(producer: &BaseProducer, me: &Me, entry: Option<&Entry>) {
    let value = entry.and_then(|e| serde_json::to_vec(e).ok());
    let mut record = BaseRecord::<str, [u8]>::to(&me.topic).key(&me.instance);
    if let Some(v) = &value {
        record = record.payload(v);
    }
    if let Err((e, _)) = producer.send(record) {
        tracing::warn!(error = %e, "cannot publish this instance's directory entry");
    }
}

fn create_topic(base: &ClientConfig, topic: &str) -> Result<(), RunError> {
    let admin: AdminClient<DefaultClientContext> = base
        .create()
        .map_err(|e| RunError::kafka("create an admin client", e))?;
    let new = NewTopic::new(topic, 1, TopicReplication::Fixed(-1)).set("cleanup.policy", "compact");
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = futures_executor::block_on(admin.create_topics([&new], &opts))
        .map_err(|e| RunError::kafka("create the directory topic", e))?;
    for r in results {
        match r {
            Ok(_) => tracing::info!(topic, "created the instance directory topic"),
            Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => {
                return Err(RunError::Setup(format!("cannot create topic {t}: {code}")))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_claim_on_a_partition_wins_and_a_tombstone_removes() {
        let d = Directory::default();
        let entry = |address: &str, partitions: Vec<i32>, at| Entry {
            address: address.into(),
            partitions,
            at,
        };
        d.apply("a".into(), Some(entry("a:1", vec![0, 1], 10)));
        d.apply("b".into(), Some(entry("b:1", vec![1], 20)));
        assert_eq!(d.owner(0), Some(("a".into(), "a:1".into())));
        assert_eq!(
            d.owner(1),
            Some(("b".into(), "b:1".into())),
            "the newer claim"
        );
        d.apply("b".into(), None);
        assert_eq!(d.owner(1), Some(("a".into(), "a:1".into())));
        assert_eq!(d.owner(7), None);
    }
}
