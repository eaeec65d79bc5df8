//! A changelog partition's own queue, read a run of records per call.
//!
//! rdkafka's `PartitionQueue::poll` hands over one record per call, and each
//! call reads the clock three times (rdkafka's timeout, and librdkafka's
//! poll-interval bookkeeping at the start and at the end of a poll): in a
//! profile of a restore of 1,000,000 records, a third of the reading
//! thread's time went to `clock_gettime`. librdkafka's
//! `rd_kafka_consume_batch_queue` takes a run of records with one poll's
//! bookkeeping, and rdkafka does not offer it: this module calls it
//! directly, and keeps the unsafe code to itself.
//!
//! Records come back as librdkafka builds them for its batch API: an error
//! of the partition (its end, with `enable.partition.eof`) is a record with
//! its error set, as with rdkafka's poll; transaction markers are skipped
//! by librdkafka.

use std::ffi::{c_void, CString};
use std::ptr::{self, NonNull};
use std::sync::Arc;

use rdkafka::bindings as rdsys;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaRespErr;

use crate::kafka::run::clients::RestoreContext;

/// One partition's queue, split off the consumer's: its records (and its
/// errors) reach only this queue.
pub(super) struct ChangelogQueue {
    queue: NonNull<rdsys::rd_kafka_queue_t>,
    /// librdkafka's client must outlive its queues.
    _consumer: Arc<BaseConsumer<RestoreContext>>,
}

impl ChangelogQueue {
    /// Splits partition `partition` of `topic` off the consumer's queue, as
    /// rdkafka's `split_partition_queue` does. `None` when librdkafka does
    /// not know the partition's queue (or the name holds a NUL).
    pub(super) fn split(
        consumer: &Arc<BaseConsumer<RestoreContext>>,
        topic: &str,
        partition: i32,
    ) -> Option<ChangelogQueue> {
        let topic = CString::new(topic).ok()?;
        // SAFETY: the client pointer is valid while `consumer` lives (this
        // struct keeps it); librdkafka copies the name. The queue returned
        // holds a reference that `Drop` gives back.
        let raw = unsafe {
            rdsys::rd_kafka_queue_get_partition(
                consumer.client().native_ptr(),
                topic.as_ptr(),
                partition,
            )
        };
        let queue = NonNull::new(raw)?;
        // SAFETY: a valid queue; forwarding to null stops forwarding its
        // records to the consumer's queue.
        unsafe { rdsys::rd_kafka_queue_forward(queue.as_ptr(), ptr::null_mut()) };
        Some(ChangelogQueue {
            queue,
            _consumer: Arc::clone(consumer),
        })
    }

    /// Replaces what `run` held with up to `max` of the records waiting on
    /// the queue, without waiting for more.
    pub(super) fn take(&self, run: &mut Run, max: usize) {
        run.clear();
        run.records.reserve(max);
        // SAFETY: the buffer has room for `max` pointers; librdkafka writes
        // the first `n` and hands their ownership over (`Run` destroys them).
        let n = unsafe {
            rdsys::rd_kafka_consume_batch_queue(
                self.queue.as_ptr(),
                0,
                run.records.as_mut_ptr(),
                max,
            )
        };
        // Negative only for arguments it refuses (none here): nothing taken.
        if let Ok(n) = usize::try_from(n) {
            // SAFETY: librdkafka initialised the first `n <= max` entries.
            unsafe { run.records.set_len(n.min(max)) };
        }
    }
}

impl Drop for ChangelogQueue {
    fn drop(&mut self) {
        // SAFETY: the reference taken in `split`, given back once.
        unsafe { rdsys::rd_kafka_queue_destroy(self.queue.as_ptr()) };
    }
}

/// Records taken off a queue; they live until the next take (or the drop).
#[derive(Default)]
pub(super) struct Run {
    records: Vec<*mut rdsys::rd_kafka_message_t>,
}

impl Run {
    pub(super) fn len(&self) -> usize {
        self.records.len()
    }

    /// Record `i`, or the error it carries.
    pub(super) fn get(&self, i: usize) -> Result<Record<'_>, KafkaError> {
        // SAFETY: a message librdkafka handed over, destroyed only by
        // `clear`, which needs `&mut self`.
        let message = unsafe { &*self.records[i] };
        match message.err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR => Ok(Record(message)),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__PARTITION_EOF => {
                Err(KafkaError::PartitionEOF(message.partition))
            }
            e => Err(KafkaError::MessageConsumption(e.into())),
        }
    }

    fn clear(&mut self) {
        for message in self.records.drain(..) {
            // SAFETY: each message handed over by librdkafka, destroyed once.
            unsafe { rdsys::rd_kafka_message_destroy(message) };
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        self.clear();
    }
}

/// A record of a changelog, borrowed from its [`Run`].
pub(super) struct Record<'a>(&'a rdsys::rd_kafka_message_t);

impl<'a> Record<'a> {
    pub(super) fn offset(&self) -> i64 {
        self.0.offset
    }

    pub(super) fn key(&self) -> Option<&'a [u8]> {
        // SAFETY: librdkafka's key pointer and length, valid while the
        // message lives.
        unsafe { slice(self.0.key, self.0.key_len) }
    }

    pub(super) fn payload(&self) -> Option<&'a [u8]> {
        // SAFETY: as for the key.
        unsafe { slice(self.0.payload, self.0.len) }
    }

    /// The value of the record's first header named `name` (empty for a
    /// header without one); `None` when it has none of that name.
    pub(super) fn header(&self, name: &std::ffi::CStr) -> Option<&'a [u8]> {
        let mut headers = ptr::null_mut();
        // SAFETY: a valid message; librdkafka keeps the headers it points
        // `headers` to with the message.
        let found = unsafe { rdsys::rd_kafka_message_headers(self.0, &mut headers) };
        if found != RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR {
            return None; // no headers at all
        }
        let (mut value, mut size): (*const c_void, usize) = (ptr::null(), 0);
        // SAFETY: valid headers and name; the value lives with the message.
        let found =
            unsafe { rdsys::rd_kafka_header_get(headers, 0, name.as_ptr(), &mut value, &mut size) };
        if found != RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR {
            return None;
        }
        // SAFETY: as for the key; a header without a value has a null one.
        Some(unsafe { slice(value, size) }.unwrap_or_default())
    }
}

/// The bytes at `data`, `None` for a null pointer.
///
/// # Safety
/// A non-null `data` must point to `len` bytes that live for `'a`.
unsafe fn slice<'a>(data: *const c_void, len: usize) -> Option<&'a [u8]> {
    if data.is_null() {
        return None;
    }
    Some(std::slice::from_raw_parts(data.cast::<u8>(), len))
}
