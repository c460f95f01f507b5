//! A fair share of the replay server between its two directions of
//! traffic: items inserted and batches sampled. When a task of one kind is
//! ready to run and waits for a worker, the other kind, if it has lately
//! moved more bytes, waits its turn; when no task of a kind is waiting, the
//! other takes all the time there is. Fair queueing by bytes, as network
//! schedulers share a link.
//!
//! Without it the server's async workers go to whichever task is next, and
//! sample streams, each of which moves a whole batch per message, took two
//! thirds of the server under a load of as many samplers as writers of
//! small items; the writers (actors, in a run) were slowed to match.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use futures::task::AtomicWaker;
use metrics::{Counter, counter};
use tokio::sync::Notify;

use crate::metrics::{HELD_SECONDS_TOTAL, SHARED_BYTES_TOTAL, SecondsCounter};

/// The two kinds of work the server shares itself between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Insert = 0,
    Sample = 1,
}

impl Class {
    const ALL: [Class; 2] = [Class::Insert, Class::Sample];

    fn other(self) -> Class {
        match self {
            Class::Insert => Class::Sample,
            Class::Sample => Class::Insert,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Class::Insert => "insert",
            Class::Sample => "sample",
        }
    }
}

/// Bytes are weighed with this half-life, so the share follows the last
/// tenth of a second or so and a class idle for a while banks no credit
/// beyond it.
const HALF_LIFE: Duration = Duration::from_millis(50);

/// How far (in decayed bytes) a class may run ahead of the other before it
/// waits: a few batches of small items, part of one of large ones.
const SLACK_BYTES: f64 = (256 << 10) as f64;

/// A class held back looks again at least this often, whatever wakes it.
const RECHECK: Duration = Duration::from_millis(1);

/// The longest one piece of work is held back: a stream ahead still makes
/// progress (an actor's insert is never parked for long), whatever the other
/// class keeps ready.
const MAX_HOLD: Duration = Duration::from_millis(10);

/// The bytes each class has moved, the count of each class's tasks that
/// are ready to run, and the turn each waits for when it is ahead. Shared
/// by every stream of a service.
#[derive(Debug)]
pub struct Share {
    ledger: Mutex<Ledger>,
    /// Per class: tasks woken and not yet polled.
    ready: [AtomicUsize; 2],
    /// Per class: woken when it may go again.
    turns: [Notify; 2],
    /// Per class: tasks waiting on `turns`.
    waiting: [AtomicUsize; 2],
    bytes: [Counter; 2],
    held_seconds: [SecondsCounter; 2],
}

#[derive(Debug)]
struct Ledger {
    /// Per class: bytes moved, each weighed by `2^(-age / HALF_LIFE)`.
    moved: [f64; 2],
    /// When `moved` was last brought up to date.
    at: Instant,
}

impl Ledger {
    fn decay_to(&mut self, now: Instant) {
        let age = now.saturating_duration_since(self.at).as_secs_f64();
        if age > 0.0 {
            let factor = (-age / HALF_LIFE.as_secs_f64()).exp2();
            self.moved.iter_mut().for_each(|moved| *moved *= factor);
            self.at = now;
        }
    }

    fn ahead(&self, class: Class) -> bool {
        self.moved[class as usize] > self.moved[class.other() as usize] + SLACK_BYTES
    }
}

impl Default for Share {
    fn default() -> Self {
        Self::new()
    }
}

impl Share {
    pub fn new() -> Self {
        Self {
            ledger: Mutex::new(Ledger {
                moved: [0.0; 2],
                at: Instant::now(),
            }),
            ready: [AtomicUsize::new(0), AtomicUsize::new(0)],
            turns: [Notify::new(), Notify::new()],
            waiting: [AtomicUsize::new(0), AtomicUsize::new(0)],
            bytes: Class::ALL.map(|class| counter!(SHARED_BYTES_TOTAL, "class" => class.label())),
            held_seconds: Class::ALL.map(|class| SecondsCounter::new(counter!(HELD_SECONDS_TOTAL, "class" => class.label()))),
        }
    }

    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        // The ledger holds only numbers, each update whole: usable after a panic.
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether `class` must wait now: it is ahead while a task of the other
    /// class is ready to run.
    fn holds_back(&self, class: Class) -> bool {
        if self.ready[class.other() as usize].load(Ordering::Acquire) == 0 {
            return false;
        }
        let mut ledger = self.ledger();
        ledger.decay_to(Instant::now());
        ledger.ahead(class)
    }

    /// Lets `class`'s held tasks look again.
    fn release(&self, class: Class) {
        if self.waiting[class as usize].load(Ordering::Acquire) > 0 {
            self.turns[class as usize].notify_waiters();
        }
    }

    /// Adds `bytes` (an item stored, a batch drawn) to what `class` moved.
    pub fn charge(&self, class: Class, bytes: usize) {
        self.bytes[class as usize].increment(bytes as u64);
        let caught_up = {
            let mut ledger = self.ledger();
            ledger.decay_to(Instant::now());
            ledger.moved[class as usize] += bytes as f64;
            !ledger.ahead(class.other())
        };
        if caught_up {
            self.release(class.other());
        }
    }

    fn woken(&self, class: Class) {
        self.ready[class as usize].fetch_add(1, Ordering::AcqRel);
    }

    fn polled(&self, class: Class) {
        if self.ready[class as usize].fetch_sub(1, Ordering::AcqRel) == 1 {
            self.release(class.other());
        }
    }

    /// Waits until `class` may do its next piece of work: at once, unless it
    /// is ahead of the other class while a task of that class is ready to
    /// run, and then for at most [`MAX_HOLD`].
    pub async fn turn(&self, class: Class) {
        // The common case, nothing held, takes no lock of the Notify.
        if !self.holds_back(class) {
            return;
        }
        let index = class as usize;
        let hold = Hold {
            held_seconds: &self.held_seconds[index],
            since: Instant::now(),
        };
        while hold.since.elapsed() < MAX_HOLD {
            let notified = self.turns[index].notified();
            tokio::pin!(notified);
            // Registered and counted before the check, so a release in
            // between is not lost.
            notified.as_mut().enable();
            let _waiting = Waiting::on(&self.waiting[index]);
            if !self.holds_back(class) {
                return;
            }
            let _ = tokio::time::timeout(RECHECK, notified).await;
        }
    }

    /// The future of a task of `class`, counted among `class`'s ready tasks
    /// from each wake to its next poll.
    pub fn task<F: Future + Unpin>(self: &Arc<Self>, class: Class, work: F) -> ShareTask<F> {
        let wakeup = Arc::new(Wakeup {
            class,
            share: Arc::clone(self),
            queued: AtomicBool::new(false),
            task: AtomicWaker::new(),
        });
        ShareTask {
            work,
            waker: Waker::from(Arc::clone(&wakeup)),
            wakeup,
        }
    }
}

/// One held turn: its time is added to the held seconds however it ends
/// (a stream that hangs up mid-wait drops it).
struct Hold<'a> {
    held_seconds: &'a SecondsCounter,
    since: Instant,
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        self.held_seconds.add(self.since.elapsed());
    }
}

/// A task counted in a class's `waiting` while it lives.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn on(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Self(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The waker a [`ShareTask`]'s work sees: it counts the task as ready until
/// its next poll, then wakes the task.
#[derive(Debug)]
struct Wakeup {
    class: Class,
    share: Arc<Share>,
    /// Counted in `share.ready`. Left set once the work is dropped, so that
    /// late wakes count nothing.
    queued: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Wakeup {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            self.share.woken(self.class);
        }
        self.task.wake();
    }
}

/// A task's future, counted among its class's ready tasks while it waits
/// to be polled (see [`Share::task`]).
#[derive(Debug)]
pub struct ShareTask<F> {
    work: F,
    wakeup: Arc<Wakeup>,
    /// `wakeup` as a waker, made once.
    waker: Waker,
}

impl<F> Drop for ShareTask<F> {
    fn drop(&mut self) {
        if self.wakeup.queued.swap(true, Ordering::AcqRel) {
            self.wakeup.share.polled(self.wakeup.class);
        }
    }
}

impl<F: Future + Unpin> Future for ShareTask<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        if this.wakeup.queued.swap(false, Ordering::AcqRel) {
            this.wakeup.share.polled(this.wakeup.class);
        }
        this.wakeup.task.register(cx.waker());
        Pin::new(&mut this.work).poll(&mut Context::from_waker(&this.waker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An insert task that has been woken and not yet run (on the test's
    /// single thread, it runs at the test's next await).
    async fn ready_insert_task(share: &Arc<Share>) -> tokio::task::JoinHandle<()> {
        let go = Arc::new(Notify::new());
        let task = tokio::spawn(share.task(
            Class::Insert,
            Box::pin({
                let go = Arc::clone(&go);
                async move { go.notified().await }
            }),
        ));
        // Its first poll registers its waker; `go` then wakes it.
        tokio::task::yield_now().await;
        assert_eq!(ready(share, Class::Insert), 0);
        go.notify_one();
        assert_eq!(ready(share, Class::Insert), 1);
        task
    }

    async fn goes_now(share: &Share, class: Class) -> bool {
        futures::poll!(Box::pin(share.turn(class))).is_ready()
    }

    fn ready(share: &Share, class: Class) -> usize {
        share.ready[class as usize].load(Ordering::Acquire)
    }

    #[tokio::test]
    async fn the_class_ahead_waits_only_while_a_task_of_the_other_is_ready() {
        let share = Arc::new(Share::new());
        share.charge(Class::Sample, 64 << 20);
        // Ahead, but no insert task is ready: sampling takes the time.
        assert!(goes_now(&share, Class::Sample).await);
        let insert = ready_insert_task(&share).await;
        // The insert task is ready and not yet run: the sample class waits,
        // the insert class (behind) does not.
        let mut sample = Box::pin(share.turn(Class::Sample));
        assert!(futures::poll!(&mut sample).is_pending());
        assert!(goes_now(&share, Class::Insert).await);
        // Once the insert task has run, the sample class goes.
        insert.await.unwrap();
        assert_eq!(ready(&share, Class::Insert), 0);
        tokio::time::timeout(Duration::from_secs(5), sample)
            .await
            .expect("the sample class was still held once no insert task was ready");
    }

    #[tokio::test]
    async fn a_class_within_the_slack_is_never_held() {
        let share = Arc::new(Share::new());
        share.charge(Class::Insert, 1 << 20);
        share.charge(Class::Sample, (1 << 20) + (128 << 10));
        let insert = ready_insert_task(&share).await;
        assert!(goes_now(&share, Class::Sample).await);
        insert.await.unwrap();
    }

    #[tokio::test]
    async fn a_task_dropped_while_ready_is_no_longer_counted() {
        let share = Arc::new(Share::new());
        share.charge(Class::Sample, 64 << 20);
        let insert = ready_insert_task(&share).await;
        insert.abort();
        let _ = insert.await;
        assert_eq!(ready(&share, Class::Insert), 0);
        assert!(goes_now(&share, Class::Sample).await);
    }

    #[tokio::test]
    async fn a_class_is_held_at_most_the_bound_per_piece_of_work() {
        let share = Arc::new(Share::new());
        share.charge(Class::Sample, 1 << 30);
        // An insert task counted ready that never runs.
        share.woken(Class::Insert);
        let started = Instant::now();
        tokio::time::timeout(Duration::from_secs(5), share.turn(Class::Sample))
            .await
            .expect("the sample class was held past its bound");
        assert!(started.elapsed() >= MAX_HOLD, "held {:?}, less than the bound", started.elapsed());
    }

    #[tokio::test]
    async fn a_held_turn_dropped_mid_wait_leaves_no_waiter_counted() {
        let share = Arc::new(Share::new());
        share.charge(Class::Sample, 1 << 30);
        share.woken(Class::Insert);
        let mut sample = Box::pin(share.turn(Class::Sample));
        assert!(futures::poll!(&mut sample).is_pending());
        assert_eq!(share.waiting[Class::Sample as usize].load(Ordering::Acquire), 1);
        drop(sample);
        assert_eq!(share.waiting[Class::Sample as usize].load(Ordering::Acquire), 0);
    }

    #[test]
    fn bytes_fade_with_the_half_life() {
        let start = Instant::now();
        let mut ledger = Ledger {
            moved: [8e6, 2e6],
            at: start,
        };
        ledger.decay_to(start + HALF_LIFE * 2);
        assert!(
            (ledger.moved[0] - 2e6).abs() < 1e-3 && (ledger.moved[1] - 5e5).abs() < 1e-3,
            "{:?}",
            ledger.moved
        );
        assert!(ledger.ahead(Class::Insert) && !ledger.ahead(Class::Sample));
    }
}
