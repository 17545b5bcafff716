// SPDX-License-Identifier: GPL-2.0

//! The kernel primitives the driver's parts share, as safe types: the
//! driver-wide lock (the kernel crate's `Mutex`, reached from a static),
//! the wait queue everyone who waits for the device sleeps on, clocks and
//! sleeps, and the watchdog thread. The Rust-for-Linux of 6.12 has no
//! poll-able wait queue (7.3 has `PollCondVar`, 6.12 does not), so that
//! one calls the C API through the module's bindings, on both kernels.

use crate::bindings;
use core::cell::UnsafeCell;
use core::pin::Pin;
use core::ffi::{c_int, c_void};
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicPtr, Ordering};
use kernel::prelude::*;
use kernel::sync::lock::{mutex::MutexBackend, Guard as LockGuard};
use kernel::sync::{new_mutex, Mutex};

/// A static way to the kernel crate's `Mutex` around the driver's state,
/// for the core's callbacks, which get no context of ours. The mutex is
/// allocated at module load (`install`) and freed at unload, when nothing
/// can call in any more: 6.12's kernel crate has no static mutex, and C's
/// `__mutex_init` is a static inline function in 7.x.
pub(crate) struct Global<T: 'static> {
    mutex: AtomicPtr<Mutex<T>>,
}

/// The value of a `Global`, while its mutex is held.
pub(crate) type Guard<T> = LockGuard<'static, T, MutexBackend>;

impl<T> Global<T> {
    pub(crate) const fn new() -> Global<T> {
        Global { mutex: AtomicPtr::new(ptr::null_mut()) }
    }

    /// Allocates the mutex around `value`; it lives until the returned
    /// `Installed` is dropped.
    pub(crate) fn install(&'static self, value: T) -> Result<Installed<T>> {
        let mutex = KBox::pin_init(new_mutex!(value, "virtio_tls"), GFP_KERNEL)?;
        // SAFETY: the mutex is never moved out of its allocation: the raw
        // pointer is only dereferenced in place, and `Installed::drop`
        // rebuilds the pinned box to free it.
        let raw = KBox::into_raw(unsafe { Pin::into_inner_unchecked(mutex) });
        self.mutex.store(raw, Ordering::Release);
        Ok(Installed { global: self })
    }

    /// Waits for the mutex (process context; may sleep).
    pub(crate) fn lock(&'static self) -> Guard<T> {
        let mutex = self.mutex.load(Ordering::Acquire);
        // SAFETY: installed at module load before the driver registers
        // with any core, and freed at unload after it unregistered from
        // all of them and stopped its thread: every caller runs in between.
        unsafe { &*mutex }.lock()
    }
}

/// Owns a `Global`'s mutex; dropping it frees the mutex.
pub(crate) struct Installed<T: 'static> {
    global: &'static Global<T>,
}

impl<T> Drop for Installed<T> {
    fn drop(&mut self) {
        let raw = self.global.mutex.swap(ptr::null_mut(), Ordering::AcqRel);
        if !raw.is_null() {
            // SAFETY: from KBox::into_raw in `install`, freed only here.
            drop(unsafe { Pin::new_unchecked(KBox::from_raw(raw)) });
        }
    }
}

/// Everyone who waits for the device sleeps or polls here: the queues'
/// interrupts wake it (virtio.rs).
pub(crate) static WAITERS: WaitQueue = WaitQueue::new();

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
