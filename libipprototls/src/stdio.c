/* The C half of libipprototls's stdio guard (src/stdio.rs): what Rust
 * cannot write on a stable compiler or should not lay out by hand.
 *
 * - dprintf and __dprintf_chk are variadic: these start the va_list and
 *   hand it to vdprintf/__vdprintf_chk, which the library defines (TLS
 *   descriptors get the formatted text through TLS). The exported names
 *   are Rust trampolines (src/stdio.rs) that jump here, because a cdylib
 *   exports only Rust's symbols.
 * - Which descriptors glibc's stdio streams write to: glibc keeps every
 *   open FILE on the list _IO_list_all (exported since GLIBC_2.2.5, the
 *   list fflush(NULL) walks), and struct _IO_FILE's _chain and _fileno are
 *   in its public <stdio.h> layout. */
#include <stdarg.h>
#include <stdio.h>

#define HIDDEN __attribute__((visibility("hidden")))

extern FILE *_IO_list_all;
extern void _IO_list_lock(void);
extern void _IO_list_unlock(void);
extern int __vdprintf_chk(int fd, int flag, const char *format, va_list ap);

HIDDEN int ipprototls_dprintf(int fd, const char *format, ...)
{
	va_list ap;
	va_start(ap, format);
	int n = vdprintf(fd, format, ap);
	va_end(ap);
	return n;
}

HIDDEN int ipprototls_dprintf_chk(int fd, int flag, const char *format, ...)
{
	va_list ap;
	va_start(ap, format);
	int n = __vdprintf_chk(fd, flag, format, ap);
	va_end(ap);
	return n;
}

/* Whether an open stdio FILE has `fd` as its descriptor. */
HIDDEN int ipprototls_stdio_uses(int fd)
{
	int found = 0;
	_IO_list_lock();
	for (FILE *file = _IO_list_all; file != NULL; file = file->_chain) {
		if (file->_fileno == fd) {
			found = 1;
			break;
		}
	}
	_IO_list_unlock();
	return found;
}
