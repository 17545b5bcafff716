//! The C library's stdio, which writes around this library.
//!
//! glibc's stdio streams (`printf`, `puts`, `fwrite`, `perror`, the fatal
//! error messages) write with glibc's internal `write`, which no preloaded
//! library can stand in for. A stream on a TLS descriptor would put
//! plaintext on the TCP stream, so this library keeps the two apart:
//!
//! - a TLS socket never has a descriptor number a stream may write to:
//!   0, 1 and 2 (stdin, stdout, stderr, and glibc's own messages to 2,
//!   whether or not their FILEs are open) and the number of every open
//!   FILE. Where the kernel chose such a number (`socket`, `accept`, `dup`,
//!   `F_DUPFD` with descriptor 1 closed, say) the socket moves to the
//!   lowest free number above them ([`move_off_reserved`],
//!   [`duplicate_above`]); where the program chose it (`dup2`, `dup3`) the
//!   call is refused with EPERM ([`reserved`]).
//! - `fdopen` of a TLS descriptor is refused (crate::exports).
//! - `dprintf` and `vdprintf`, which format into a stream of their own on
//!   the descriptor, are defined here: on a TLS descriptor the formatted
//!   text goes through TLS.
//!
//! Two pieces are C (src/stdio.c): the variadic `dprintf`s' `va_start`
//! (C-variadic functions are unstable in Rust), and walking glibc's list of
//! open streams (`_IO_list_all`), whose FILE layout comes from glibc's own
//! header rather than a copy of it here.

use std::ffi::{c_char, c_int, c_void};

use tls_engine::errno::Errno;

use crate::{exports, real, table};

/// A `va_list` argument. On x86-64 a `va_list` is an array (one
/// `__va_list_tag`), passed as a pointer to it; on AArch64 it is a 32-byte
/// structure, which the calling convention passes as a pointer to a copy.
/// Either way the callee receives a pointer and may hand it on as is.
pub type VaList = *mut c_void;

extern "C" {
    fn ipprototls_dprintf();
    fn ipprototls_dprintf_chk();
    fn ipprototls_stdio_uses(fd: c_int) -> c_int;
    fn vasprintf(text: *mut *mut c_char, format: *const c_char, ap: VaList) -> c_int;
    fn __vasprintf_chk(text: *mut *mut c_char, flag: c_int, format: *const c_char, ap: VaList) -> c_int;
}

/// Why a TLS socket may not have descriptor number `fd`, if it may not.
pub fn reserved(fd: c_int) -> Option<String> {
    let stream = match fd {
        0 => "standard input (stdin)".to_owned(),
        1 => "standard output (stdout)".to_owned(),
        2 => "standard error (stderr)".to_owned(),
        // (Memory streams have descriptor -1: not a number to reserve.)
        // SAFETY: walks glibc's stream list under its lock; no arguments
        // but a number.
        _ if fd > 2 && unsafe { ipprototls_stdio_uses(fd) } != 0 => "an open stdio FILE's descriptor".to_owned(),
        _ => return None,
    };
    Some(format!(
        "descriptor {fd} is {stream}: the C library's stdio writes there around TLS, so a TLS socket may not take it"
    ))
}

/// A close-on-exec duplicate of `fd` at the lowest free number that is at
/// least `min` and not [`reserved`].
pub fn duplicate_above(fd: c_int, min: c_int) -> Result<c_int, Errno> {
    let mut from = min.max(3);
    loop {
        // SAFETY: F_DUPFD_CLOEXEC on a descriptor the caller passed.
        let copy = unsafe { real::fcntl(fd, libc::F_DUPFD_CLOEXEC, libc::c_long::from(from)) };
        if copy < 0 {
            return Err(match real::errno() {
                // Past the descriptor limit only because numbers were
                // skipped: out of descriptors, as dup() would say.
                libc::EINVAL if from != min => Errno::EMFILE,
                errno => Errno(errno as u32),
            });
        }
        if reserved(copy).is_none() {
            return Ok(copy);
        }
        // A FILE whose descriptor was closed under it: look further up.
        // SAFETY: the copy just made, ours.
        unsafe { real::close(copy) };
        from = copy + 1;
    }
}

/// `fd`, a descriptor this library just made for a TLS socket, at a
/// number no stdio stream writes to: itself, or a duplicate (`fd` is then
/// closed). On failure `fd` is left open for the caller to close.
pub fn move_off_reserved(fd: c_int) -> Result<c_int, Errno> {
    if reserved(fd).is_none() {
        return Ok(fd);
    }
    let moved = duplicate_above(fd, 3)?;
    // SAFETY: the caller's descriptor, now duplicated.
    unsafe { real::close(fd) };
    Ok(moved)
}

// ---------------------------------------------------------------------------
// dprintf and vdprintf
// ---------------------------------------------------------------------------

/// Writes the whole of `text` through the library's `write` (TLS for a TLS
/// descriptor), as glibc's dprintf writes its whole buffer; -1 and errno on
/// failure (some of the text may have gone), SIGPIPE as `write` raises it.
///
/// # Safety
/// `text` is valid for reading `len` bytes.
unsafe fn write_all(fd: c_int, text: *const c_char, len: usize) -> c_int {
    let mut sent = 0;
    while sent < len {
        // SAFETY: within the caller's buffer.
        let n = unsafe { exports::write(fd, text.add(sent).cast(), len - sent) };
        if n < 0 {
            if real::errno() == libc::EINTR {
                continue;
            }
            return -1;
        }
        sent += n as usize;
    }
    len as c_int
}

/// Formats with `format` (`vasprintf` or `__vasprintf_chk`), then writes
/// the text through TLS.
fn print_through_tls(fd: c_int, format: impl FnOnce(*mut *mut c_char) -> c_int) -> c_int {
    let mut text: *mut c_char = std::ptr::null_mut();
    let len = format(&mut text);
    if len < 0 {
        return -1; // vasprintf set errno (ENOMEM, EOVERFLOW)
    }
    // SAFETY: vasprintf made text, len bytes and a NUL, with malloc.
    let result = unsafe { write_all(fd, text, len as usize) };
    // SAFETY: as above; freed once.
    unsafe { libc::free(text.cast::<c_void>()) };
    result
}

#[no_mangle]
pub unsafe extern "C" fn vdprintf(fd: c_int, format: *const c_char, ap: VaList) -> c_int {
    if table::lookup(fd).is_none() {
        // SAFETY: passing the program's call on.
        return unsafe { real::vdprintf(fd, format, ap) };
    }
    // SAFETY: the program's format and arguments.
    print_through_tls(fd, |text| unsafe { vasprintf(text, format, ap) })
}

/// vdprintf under `_FORTIFY_SOURCE` (`flag` asks for its format checks).
#[no_mangle]
pub unsafe extern "C" fn __vdprintf_chk(fd: c_int, flag: c_int, format: *const c_char, ap: VaList) -> c_int {
    if table::lookup(fd).is_none() {
        // SAFETY: passing the program's call on.
        return unsafe { real::__vdprintf_chk(fd, flag, format, ap) };
    }
    // SAFETY: the program's format and arguments.
    print_through_tls(fd, |text| unsafe { __vasprintf_chk(text, flag, format, ap) })
}

// `dprintf(fd, format, ...)` and `__dprintf_chk(fd, flag, format, ...)`:
// jumps to src/stdio.c, which starts the va_list and calls vdprintf or
// __vdprintf_chk above. A jump leaves the arguments (registers, stack, and
// x86-64's %al vector count) exactly as the program passed them.

/// `int dprintf(int fd, const char *format, ...)`.
#[unsafe(naked)]
#[no_mangle]
pub unsafe extern "C" fn dprintf() {
    #[cfg(target_arch = "x86_64")]
    std::arch::naked_asm!("jmp {}", sym ipprototls_dprintf);
    #[cfg(target_arch = "aarch64")]
    std::arch::naked_asm!("b {}", sym ipprototls_dprintf);
}

/// `int __dprintf_chk(int fd, int flag, const char *format, ...)`.
#[unsafe(naked)]
#[no_mangle]
pub unsafe extern "C" fn __dprintf_chk() {
    #[cfg(target_arch = "x86_64")]
    std::arch::naked_asm!("jmp {}", sym ipprototls_dprintf_chk);
    #[cfg(target_arch = "aarch64")]
    std::arch::naked_asm!("b {}", sym ipprototls_dprintf_chk);
}
