//! The group-commit hand-off between many writers and the one committer thread.
//!
//! Writers [`CommitQueue::push`] an item (which carries its own reply) under a short lock and
//! never wait here. The committer ([`run_committer`]) sleeps until the queue is non-empty, takes
//! up to `group_max` items in push order, makes the whole group durable with one call, and only
//! then hands the group to `complete`, which replies to every writer. So a writer's reply always
//! comes after a flush that covers its item, and one flush serves every writer that arrived
//! while the previous flush was running.
//!
//! A flush costs about the same for one writer as for many (sled hands its log buffer to an I/O
//! thread, writes, syncs, and wakes the committer again), so with few writers at a time most of
//! the storage CPU went into groups of one or two. A queue made [`CommitQueue::with_linger`]
//! lets the committer wait a little for more writers before it takes a small group: at most
//! `Linger::wait`, and not at all once `Linger::group` items are waiting. It lingers only while
//! that pays: after a group of two or more that left nothing behind, and never again after a
//! wait that gained nothing until such a group comes. A writer that commits one write after
//! the other (an import, one busy account) therefore never waits: nobody can join it.
//!
//! [`CommitQueue::close`] refuses new items but lets the committer drain what was accepted, so
//! no accepted writer is lost. The queue is generic over the item so the loom model below can
//! use a tiny Mutex+Condvar reply slot where production uses a tokio oneshot.
//!
//! Single consumer: exactly one thread calls `pop_group`, which is why `push` wakes with
//! `notify_one`.

use std::collections::VecDeque;
use std::sync::PoisonError;
use std::time::{Duration, Instant};

use crate::sync::{Condvar, Mutex, MutexGuard};

/// Why [`CommitQueue::push`] refused an item; the item comes back so its reply can be answered.
#[derive(Debug)]
pub(crate) enum PushError<T> {
    /// `capacity` items are already waiting.
    Full(T),
    /// [`CommitQueue::close`] was called.
    Closed(T),
}

/// How long the committer waits for more writers before it takes a small group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Linger {
    /// Wait only while fewer than this many items are waiting (0 or 1: never wait).
    pub(crate) group: usize,
    /// Wait at most this long (zero: never wait), from when the committer is ready for the
    /// next group and finds it short.
    pub(crate) wait: Duration,
}

/// A bounded FIFO of items waiting for the committer.
#[derive(Debug)]
pub(crate) struct CommitQueue<T> {
    state: Mutex<QueueState<T>>,
    /// Signalled when the queue goes from empty to non-empty, when it reaches `linger.group`
    /// items, and on close.
    ready: Condvar,
    capacity: usize,
    linger: Linger,
}

#[derive(Debug)]
struct QueueState<T> {
    items: VecDeque<T>,
    closed: bool,
    /// Whether the committer lingers on its next short group (see the module doc). Only the
    /// committer reads and writes it.
    lingering: bool,
}

impl<T> CommitQueue<T> {
    /// A queue that holds at most `capacity` waiting items (at least 1), whose committer never
    /// lingers (the tests and the loom model; loom's condvar has no timeout).
    #[cfg(any(test, loom))]
    pub(crate) fn new(capacity: usize) -> Self {
        Self::with_linger(capacity, Linger::default())
    }

    /// A queue whose committer lingers as `linger` says before taking a small group.
    pub(crate) fn with_linger(capacity: usize, linger: Linger) -> Self {
        CommitQueue {
            state: Mutex::new(QueueState {
                items: VecDeque::new(),
                closed: false,
                lingering: false,
            }),
            ready: Condvar::new(),
            capacity: capacity.max(1),
            linger,
        }
    }

    /// Enqueues `item` without blocking on the committer. Refused when full or closed.
    pub(crate) fn push(&self, item: T) -> Result<(), PushError<T>> {
        let mut state = self.lock();
        if state.closed {
            return Err(PushError::Closed(item));
        }
        if state.items.len() >= self.capacity {
            return Err(PushError::Full(item));
        }
        let was_empty = state.items.is_empty();
        state.items.push_back(item);
        let lingered_enough = state.items.len() == self.linger.group;
        drop(state);
        // The committer sleeps on an empty queue, or lingers on one shorter than
        // `linger.group`: only the first item and the one that reaches the group wake it.
        if was_empty || lingered_enough {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// Blocks until items are waiting, then takes up to `group_max` (at least 1) of them in push
    /// order. Returns `None` once the queue is closed and fully drained.
    pub(crate) fn pop_group(&self, group_max: usize) -> Option<Vec<T>> {
        let mut state = self.lock();
        loop {
            if !state.items.is_empty() {
                if state.lingering {
                    let before = state.items.len();
                    state = self.linger(state);
                    state.lingering = state.items.len() > before;
                }
                let take = state.items.len().min(group_max.max(1));
                let group: Vec<T> = state.items.drain(..take).collect();
                // Company this time, and room: more writers are likely to come while it
                // flushes. Items left behind mean the next group is full without waiting.
                if group.len() >= 2 && state.items.is_empty() {
                    state.lingering = true;
                }
                return Some(group);
            }
            if state.closed {
                return None;
            }
            state = self
                .ready
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// With fewer than `linger.group` items waiting, waits up to `linger.wait` for more, so
    /// that one flush serves them all. Stops early when the group is reached or on close.
    fn linger<'a>(
        &'a self,
        mut state: MutexGuard<'a, QueueState<T>>,
    ) -> MutexGuard<'a, QueueState<T>> {
        if self.linger.wait.is_zero() {
            return state;
        }
        let deadline = Instant::now() + self.linger.wait;
        while state.items.len() < self.linger.group && !state.closed {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            state = self
                .ready
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        state
    }

    /// Refuses further pushes; items already accepted are still handed out by `pop_group`.
    /// Idempotent.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }

    /// Closes the queue and takes every waiting item, for a committer that cannot go on: the
    /// caller drops them, which answers each writer with "closed" instead of leaving it waiting.
    pub(crate) fn close_and_take_all(&self) -> Vec<T> {
        let mut state = self.lock();
        state.closed = true;
        let rest = state.items.drain(..).collect();
        drop(state);
        self.ready.notify_all();
        rest
    }

    /// Items waiting right now.
    #[cfg_attr(loom, allow(dead_code))]
    pub(crate) fn len(&self) -> usize {
        self.lock().items.len()
    }

    fn lock(&self) -> MutexGuard<'_, QueueState<T>> {
        // A panic while holding this lock cannot leave the queue half-updated (every change is
        // one VecDeque call or a bool store), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The committer loop: until the queue is closed and drained, take a group, make it durable
/// (`make_durable` must return only after the flush that covers the whole group), then complete
/// it. `make_durable` gets `&mut` so it can move the payload out and leave the reply.
pub(crate) fn run_committer<T, O>(
    queue: &CommitQueue<T>,
    group_max: usize,
    mut make_durable: impl FnMut(&mut [T]) -> O,
    mut complete: impl FnMut(Vec<T>, O),
) {
    while let Some(mut group) = queue.pop_group(group_max) {
        let outcome = make_durable(&mut group);
        complete(group, outcome);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    // The queue refuses beyond capacity, refuses after close, and still drains after close.
    #[test]
    fn capacity_close_and_drain() {
        let queue = CommitQueue::new(2);
        assert!(queue.push(1).is_ok());
        assert!(queue.push(2).is_ok());
        assert!(matches!(queue.push(3), Err(PushError::Full(3))));
        assert_eq!(queue.len(), 2);
        queue.close();
        assert!(matches!(queue.push(4), Err(PushError::Closed(4))));
        assert_eq!(queue.pop_group(1), Some(vec![1]));
        assert_eq!(queue.pop_group(8), Some(vec![2]));
        assert_eq!(queue.pop_group(8), None);
    }

    // A lingering committer waits for more items up to the deadline, takes the group at once
    // when it is complete, and never lingers on a closed queue.
    #[test]
    fn linger_waits_for_a_group_or_the_deadline() {
        let wait = Duration::from_millis(200);
        let queue = std::sync::Arc::new(CommitQueue::with_linger(16, Linger { group: 3, wait }));
        // What the next group is and whether the committer waited the deadline out for it.
        let pop = |queue: &CommitQueue<i32>| {
            let started = Instant::now();
            let group = queue.pop_group(8);
            (group, started.elapsed() >= wait)
        };
        // A lone writer never waits: nobody has joined a group yet.
        assert!(queue.push(0).is_ok());
        assert_eq!(pop(&queue), (Some(vec![0]), false));
        // A group with company switches lingering on; the next short group waits the deadline
        // out, gains nothing, and so switches it off again.
        assert!(queue.push(10).is_ok());
        assert!(queue.push(11).is_ok());
        assert_eq!(queue.pop_group(8), Some(vec![10, 11]));
        assert!(queue.push(1).is_ok());
        assert_eq!(pop(&queue), (Some(vec![1]), true));
        assert!(queue.push(12).is_ok());
        assert_eq!(pop(&queue), (Some(vec![12]), false));

        // On again; a group that completes during the wait is taken at once.
        assert!(queue.push(13).is_ok());
        assert!(queue.push(14).is_ok());
        assert_eq!(queue.pop_group(8), Some(vec![13, 14]));
        assert!(queue.push(2).is_ok());
        let pusher = {
            let queue = queue.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                assert!(queue.push(3).is_ok());
                assert!(queue.push(4).is_ok());
            })
        };
        assert_eq!(pop(&queue), (Some(vec![2, 3, 4]), false));
        pusher.join().unwrap();

        assert!(queue.push(5).is_ok());
        queue.close();
        assert_eq!(pop(&queue), (Some(vec![5]), false));
    }

    // A group never exceeds group_max and keeps push order.
    #[test]
    fn groups_are_bounded_and_ordered() {
        let queue = CommitQueue::new(16);
        for i in 0..5 {
            assert!(queue.push(i).is_ok());
        }
        assert_eq!(queue.pop_group(2), Some(vec![0, 1]));
        assert_eq!(queue.close_and_take_all(), vec![2, 3, 4]);
        assert_eq!(queue.pop_group(2), None);
    }
}

// Run with: cd /work/main && RUSTFLAGS="--cfg loom" cargo test -p orderd-storage --release --lib commit_queue
#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::atomic::{AtomicUsize, Ordering};
    use loom::sync::Arc;
    use loom::thread;

    const GROUP_MAX: usize = 2;

    /// Stands in for the tokio oneshot: the committer stores the durable count it completed with.
    #[derive(Default)]
    struct Slot {
        value: Mutex<Option<usize>>,
        filled: Condvar,
    }

    impl Slot {
        fn complete(&self, durable: usize) {
            *self.value.lock().unwrap() = Some(durable);
            self.filled.notify_one();
        }

        fn wait(&self) -> usize {
            let mut value = self.value.lock().unwrap();
            loop {
                if let Some(durable) = *value {
                    return durable;
                }
                value = self.filled.wait(value).unwrap();
            }
        }
    }

    struct Item {
        id: (usize, usize),
        reply: Arc<Slot>,
    }

    /// The "database": what was applied, in order, and how much of it a flush made durable.
    #[derive(Default)]
    struct Store {
        applied: Mutex<Vec<(usize, usize)>>,
        durable: AtomicUsize,
    }

    impl Store {
        fn position(&self, id: (usize, usize)) -> usize {
            let applied = self.applied.lock().unwrap();
            applied
                .iter()
                .position(|x| *x == id)
                .expect("a completed item was applied")
        }
    }

    fn spawn_committer(queue: Arc<CommitQueue<Item>>, store: Arc<Store>) -> thread::JoinHandle<()> {
        thread::spawn(move || {
            run_committer(
                &queue,
                GROUP_MAX,
                |group| {
                    // Apply the group, then "flush": publish how many items are durable.
                    let mut applied = store.applied.lock().unwrap();
                    applied.extend(group.iter().map(|item| item.id));
                    let len = applied.len();
                    drop(applied);
                    store.durable.store(len, Ordering::SeqCst);
                    len
                },
                |group, durable| {
                    for item in group {
                        item.reply.complete(durable);
                    }
                },
            );
        })
    }

    /// Pushes the item and waits for its reply, then checks the flush covered it.
    fn push_and_check(queue: &CommitQueue<Item>, store: &Store, ids: &[(usize, usize)]) {
        let slots: Vec<_> = ids
            .iter()
            .map(|&id| {
                let reply = Arc::new(Slot::default());
                let pushed = queue.push(Item {
                    id,
                    reply: reply.clone(),
                });
                assert!(pushed.is_ok(), "the queue is open and has room");
                (id, reply)
            })
            .collect();
        for (id, slot) in slots {
            let completed_with = slot.wait();
            let position = store.position(id);
            assert!(position < completed_with, "woken by a flush that covers it");
            assert!(position < store.durable.load(Ordering::SeqCst));
        }
    }

    // Two writers (one pushing two items back to back) and the committer: every writer is woken,
    // only after a flush covering its item; one writer's items are applied in its push order;
    // close lets the committer drain and exit, and a push after close is refused.
    #[test]
    fn writers_woken_after_covering_flush() {
        let mut model = loom::model::Builder::new();
        model.preemption_bound = Some(3);
        model.check(|| {
            let queue = Arc::new(CommitQueue::new(4));
            let store = Arc::new(Store::default());
            let committer = spawn_committer(queue.clone(), store.clone());
            let writers: Vec<_> = [vec![(0, 0), (0, 1)], vec![(1, 0)]]
                .into_iter()
                .map(|ids| {
                    let (queue, store) = (queue.clone(), store.clone());
                    thread::spawn(move || push_and_check(&queue, &store, &ids))
                })
                .collect();
            for writer in writers {
                writer.join().unwrap();
            }
            queue.close();
            let late = Item {
                id: (9, 9),
                reply: Arc::new(Slot::default()),
            };
            assert!(matches!(queue.push(late), Err(PushError::Closed(_))));
            committer.join().unwrap();
            let applied = store.applied.lock().unwrap();
            assert_eq!(applied.len(), 3);
            let position = |id| applied.iter().position(|x| *x == id).expect("applied");
            assert!(position((0, 0)) < position((0, 1)), "applied in push order");
            assert_eq!(store.durable.load(Ordering::SeqCst), 3);
        });
    }

    // A push racing with close is either refused or completed after a flush: no writer is left
    // waiting, and the committer still exits.
    #[test]
    fn push_racing_close_is_never_lost() {
        loom::model(|| {
            let queue = Arc::new(CommitQueue::new(4));
            let store = Arc::new(Store::default());
            let committer = spawn_committer(queue.clone(), store.clone());
            let writer = {
                let (queue, store) = (queue.clone(), store.clone());
                thread::spawn(move || {
                    let reply = Arc::new(Slot::default());
                    let item = Item {
                        id: (0, 0),
                        reply: reply.clone(),
                    };
                    match queue.push(item) {
                        Ok(()) => {
                            let completed_with = reply.wait();
                            assert!(store.position((0, 0)) < completed_with);
                            true
                        }
                        Err(PushError::Closed(_)) => false,
                        Err(PushError::Full(_)) => panic!("capacity 4 cannot be full"),
                    }
                })
            };
            queue.close();
            let accepted = writer.join().unwrap();
            committer.join().unwrap();
            assert_eq!(store.applied.lock().unwrap().len(), usize::from(accepted));
        });
    }
}
