// SPDX-License-Identifier: GPL-2.0

//! The kernel primitives the driver's parts share, as safe types: a
//! driver-wide lock around a static value, the wait queue everyone who
//! waits for the device sleeps on, clocks and sleeps, and the watchdog
//! thread. The Rust-for-Linux of 6.12 has no static mutex or poll-able
//! wait queue of its own (7.3 has `PollCondVar`, 6.12 does not), so these
//! call the C API through the module's bindings, on both kernels alike.

use crate::bindings;
use core::cell::UnsafeCell;
use core::ffi::{c_int, c_void};
use core::ops::{Deref, DerefMut};
use core::ptr::{self, NonNull};
use kernel::prelude::*;

/// A value behind a kernel mutex, for statics: `init` once at module
/// load, then `lock` from process context.
pub(crate) struct Locked<T> {
    mutex: UnsafeCell<bindings::mutex>,
    key: UnsafeCell<bindings::lock_class_key>,
    value: UnsafeCell<T>,
}

// SAFETY: the value is reached only through `lock`, which holds the mutex;
// T: Send because the holder may be any task.
unsafe impl<T: Send> Sync for Locked<T> {}

impl<T> Locked<T> {
    pub(crate) const fn new(value: T) -> Locked<T> {
        Locked {
            // SAFETY: all-zero is the state __mutex_init expects to start
            // from (static storage); nothing locks it before `init`.
            mutex: UnsafeCell::new(unsafe { core::mem::zeroed() }),
            // SAFETY: lockdep keys are plain static storage.
            key: UnsafeCell::new(unsafe { core::mem::zeroed() }),
            value: UnsafeCell::new(value),
        }
    }

    /// Initialises the mutex.
    ///
    /// # Safety
    ///
    /// Once, before any `lock`: at module load.
    pub(crate) unsafe fn init(&'static self, name: &'static core::ffi::CStr) {
        // SAFETY: static storage, not yet in use (the caller's contract).
        unsafe { bindings::__mutex_init(self.mutex.get(), name.as_ptr().cast(), self.key.get()) };
    }

    /// Waits for the mutex (process context; may sleep).
    pub(crate) fn lock(&'static self) -> Guard<T> {
        // SAFETY: initialised at module load (`init`'s contract), before
        // anything that could call this.
        unsafe { bindings::mutex_lock(self.mutex.get()) };
        Guard { locked: self }
    }
}

/// The value of a `Locked`, while its mutex is held.
pub(crate) struct Guard<T: 'static> {
    locked: &'static Locked<T>,
}

impl<T> Deref for Guard<T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the mutex is held for the guard's lifetime.
        unsafe { &*self.locked.value.get() }
    }
}

impl<T> DerefMut for Guard<T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in deref; &mut self makes this the only reference.
        unsafe { &mut *self.locked.value.get() }
    }
}

impl<T> Drop for Guard<T> {
    fn drop(&mut self) {
        // SAFETY: locked in `Locked::lock` by this task.
        unsafe { bindings::mutex_unlock(self.locked.mutex.get()) };
    }
}

/// A wait queue in static storage: callers sleep on it until the device
/// returns a buffer (its queues' interrupts wake it) or a timeout, and
/// poll/select/epoll register on it.
pub(crate) struct WaitQueue {
    head: UnsafeCell<bindings::wait_queue_head>,
    key: UnsafeCell<bindings::lock_class_key>,
}

// SAFETY: the wait queue head has its own spinlock; every access below
// goes through the C functions that take it.
unsafe impl Sync for WaitQueue {}

impl WaitQueue {
    pub(crate) const fn new() -> WaitQueue {
        WaitQueue {
            // SAFETY: as for Locked: initialised by `init` before use.
            head: UnsafeCell::new(unsafe { core::mem::zeroed() }),
            // SAFETY: as for Locked.
            key: UnsafeCell::new(unsafe { core::mem::zeroed() }),
        }
    }

    /// # Safety
    ///
    /// Once, before any other use: at module load.
    pub(crate) unsafe fn init(&'static self, name: &'static core::ffi::CStr) {
        // SAFETY: static storage, not yet in use (the caller's contract).
        unsafe { bindings::__init_waitqueue_head(self.head.get(), name.as_ptr().cast(), self.key.get()) };
    }

    /// Wakes every sleeper and poller, to look at their sockets again.
    /// Safe in hard-IRQ context (the queues' callbacks call it).
    pub(crate) fn wake_all(&'static self) {
        // SAFETY: initialised at module load, before any device or socket.
        unsafe {
            bindings::__wake_up(
                self.head.get(),
                bindings::TASK_INTERRUPTIBLE | bindings::TASK_UNINTERRUPTIBLE,
                0,
                ptr::null_mut(),
            )
        };
    }

    /// Sleeps until woken or `max_us` pass, whichever is first; at once
    /// with a signal pending. Callers check their condition before and
    /// after: a wake-up between their check and this call is missed, and
    /// the timeout bounds what that costs. No lock may be held.
    pub(crate) fn wait(&'static self, max_us: u64) {
        // SAFETY: a plain C struct, initialised by init_wait_entry below.
        let mut entry: bindings::wait_queue_entry = unsafe { core::mem::zeroed() };
        let mut expires: bindings::ktime_t = (max_us * 1000) as bindings::ktime_t;
        // SAFETY: process context; the head is initialised; `entry` stays
        // on this stack until finish_wait has taken it off the queue.
        // prepare_to_wait_event sets the task state the hrtimer sleep then
        // sleeps in; with a signal pending it does not, and we return.
        unsafe {
            bindings::init_wait_entry(&mut entry, 0);
            let signal = bindings::prepare_to_wait_event(self.head.get(), &mut entry, bindings::TASK_INTERRUPTIBLE as c_int) != 0;
            if !signal {
                bindings::schedule_hrtimeout_range(&mut expires, max_us * 250, bindings::hrtimer_mode_HRTIMER_MODE_REL);
            }
            bindings::finish_wait(self.head.get(), &mut entry);
        }
    }

    /// poll_wait(), an inline function: registers the poller on this
    /// queue.
    ///
    /// # Safety
    ///
    /// `file` and `table` are what the core passed to a `poll` operation
    /// that is running (`table` may be null).
    pub(crate) unsafe fn register_poll(&'static self, file: *mut bindings::file, table: *mut bindings::poll_table_struct) {
        if table.is_null() {
            return;
        }
        // SAFETY: the caller's contract; the head is initialised.
        unsafe {
            if let Some(queue) = (*table)._qproc {
                queue(file, self.head.get(), table);
            }
        }
    }
}

/// The monotonic clock, in nanoseconds.
pub(crate) fn now_ns() -> u64 {
    // SAFETY: reading the clock has no preconditions.
    unsafe { bindings::ktime_get_mono_fast_ns() }
}

/// The kernel tick counter.
pub(crate) fn now_jiffies() -> u64 {
    // SAFETY: jiffies is only ever read here; a volatile read is how C
    // reads it too.
    unsafe { ptr::read_volatile(ptr::addr_of!(bindings::jiffies)) as u64 }
}

/// Sleeps between `min_us` and `max_us` microseconds, uninterruptibly
/// (process context).
pub(crate) fn sleep_us(min_us: u64, max_us: u64) {
    // SAFETY: process context (every caller is a syscall or probe).
    unsafe { bindings::usleep_range_state(min_us as _, max_us as _, bindings::TASK_UNINTERRUPTIBLE) };
}

/// Whether the calling task has a signal to handle: blocking socket calls
/// return then, as TCP's do.
pub(crate) fn signal_pending() -> bool {
    kernel::current!().signal_pending()
}

/// When a wait bounded by SO_RCVTIMEO/SO_SNDTIMEO ends.
#[derive(Clone, Copy)]
pub(crate) struct Deadline(Option<u64>);

impl Deadline {
    /// From a socket timeout in jiffies (`c_long::MAX`, as sock_init_data
    /// sets it, or <= 0: none), starting now.
    pub(crate) fn after(timeout: i64) -> Deadline {
        if timeout == i64::MAX || timeout <= 0 {
            return Deadline(None);
        }
        Deadline(Some(now_jiffies().wrapping_add(timeout as u64)))
    }

    pub(crate) fn passed(self) -> bool {
        self.0.is_some_and(|end| (now_jiffies().wrapping_sub(end) as i64) >= 0)
    }
}

/// A kernel thread that runs `tick` about once a second until stopped.
pub(crate) struct Ticker {
    task: NonNull<bindings::task_struct>,
}

// SAFETY: a task pointer may be stopped from any task.
unsafe impl Send for Ticker {}
// SAFETY: as above; `Ticker` has no interior state.
unsafe impl Sync for Ticker {}

impl Ticker {
    pub(crate) fn start(name: &'static core::ffi::CStr, tick: fn()) -> Result<Ticker> {
        // SAFETY: `ticker_main` takes `data` back as the same fn pointer;
        // "%s" with a NUL-terminated name; -1 is NUMA_NO_NODE.
        let task = unsafe {
            bindings::kthread_create_on_node(
                Some(ticker_main),
                tick as *mut c_void,
                -1,
                c"%s".as_ptr().cast(),
                name.as_ptr(),
            )
        };
        // kthread_create returns an ERR_PTR on failure.
        if task.is_null() || (task as isize) < 0 && (task as isize) >= -4095 {
            return Err(ENOMEM);
        }
        // SAFETY: a task just created, not yet woken.
        unsafe { bindings::wake_up_process(task) };
        Ok(Ticker { task: NonNull::new(task).ok_or(ENOMEM)? })
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        // SAFETY: the thread runs until kthread_should_stop (ticker_main
        // never returns before), so the task is alive here.
        unsafe { bindings::kthread_stop(self.task.as_ptr()) };
    }
}

unsafe extern "C" fn ticker_main(data: *mut c_void) -> c_int {
    // SAFETY: `start` passed a `fn()` as data.
    let tick: fn() = unsafe { core::mem::transmute::<*mut c_void, fn()>(data) };
    // SAFETY: kthread functions, called from the thread itself.
    unsafe {
        while !bindings::kthread_should_stop() {
            tick();
            bindings::schedule_timeout_interruptible(bindings::__msecs_to_jiffies(1000) as _);
        }
    }
    0
}
