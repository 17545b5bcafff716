/* No plaintext around TLS: every C library call that could put bytes on an
 * IPPROTO_TLS socket's TCP stream (or take them off it) without going
 * through libipprototls either goes through TLS or is refused.
 *
 * Each case opens its own connection through recording-relay.py, a plain
 * TCP relay in front of a TLS echo server that keeps every byte either way;
 * tests/run then checks that each recorded connection is nothing but TLS
 * records and that MARKER, which every case tries to send, is in none of
 * them. The accept() case listens itself (with its own certificate, under
 * a policy with application_identities) behind a second relay. Here each case checks that the call went through TLS
 * (the echo server decrypted it and sent it back) or failed with the
 * documented errno, and that the connection still works after it.
 *
 * The program's own report goes to a copy of its standard output at
 * descriptor 100: its descriptors 0, 1 and 2 are /dev/null, the targets of
 * the cases below.
 * usage: tls-plaintext RELAY_PORT SERVER_PORT SERVER_RELAY_PORT CERT KEY
 *   RELAY_PORT: the relay in front of the echo server;
 *   SERVER_PORT: a free loopback port to listen on, where
 *   SERVER_RELAY_PORT relays to; CERT, KEY: PEM files for localhost. */
#define _GNU_SOURCE
#include <aio.h>
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>
#include "../../../include/in_tls.h"

#define MARKER "PLAINTEXT-MARKER"
#define REPORT_FD 100

/* glibc's exported names for its own functions and fortified variants,
 * which a program can call (and _FORTIFY_SOURCE compiles dprintf into). */
extern ssize_t __write(int fd, const void *buf, size_t count);
extern ssize_t __read(int fd, void *buf, size_t count);
extern ssize_t __send(int fd, const void *buf, size_t len, int flags);
extern int __fcntl(int fd, int cmd, ...);
extern int __dup2(int fd, int new_fd);
extern int __close(int fd);
extern int __connect(int fd, const struct sockaddr *addr, socklen_t len);
extern FILE *_IO_fdopen(int fd, const char *mode);
extern int __dprintf_chk(int fd, int flag, const char *format, ...);
extern int __vdprintf_chk(int fd, int flag, const char *format, va_list ap);

static int failures, connections, server_connections, relay_port, devnull;

static void report(const char *format, ...)
{
	char line[512];
	va_list ap;
	va_start(ap, format);
	int n = vsnprintf(line, sizeof(line), format, ap);
	va_end(ap);
	if (n > (int)sizeof(line) - 1)
		n = sizeof(line) - 1;
	if (write(REPORT_FD, line, n) < 0)
		exit(3);
}

static void check(int ok, const char *what)
{
	int saved = errno;
	report("%s: %s\n", ok ? "ok" : "FAILED", what);
	if (!ok)
		report("  errno %d (%s)\n", saved, strerror(saved));
	failures += !ok;
}

/* Descriptors 0-2 back to /dev/null, and stdio's streams usable again. */
static void standard_descriptors(void)
{
	for (int fd = 0; fd <= 2; fd++)
		dup2(devnull, fd);
	clearerr(stdin);
	clearerr(stdout);
	clearerr(stderr);
}

static int tls_socket(void)
{
	int fd = socket(AF_INET, SOCK_STREAM, IPPROTO_TLS);
	setsockopt(fd, IPPROTO_TLS, TLS_HOSTNAME, "localhost", 10);
	struct timeval five = { .tv_sec = 5 };
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &five, sizeof(five));
	return fd;
}

static struct sockaddr_in loopback(int port)
{
	struct sockaddr_in in = { .sin_family = AF_INET, .sin_port = htons(port) };
	inet_pton(AF_INET, "127.0.0.1", &in.sin_addr);
	return in;
}

static int tls_connect(int fd)
{
	struct sockaddr_in in = loopback(relay_port);
	if (connect(fd, (struct sockaddr *)&in, sizeof(in)) != 0)
		return -1;
	connections++;
	return fd;
}

/* A connected TLS socket through the relay. */
static int tls_open(void)
{
	int fd = tls_connect(tls_socket());
	if (fd < 0)
		check(0, "connect through the relay");
	return fd;
}

/* Whether the echo server sends back exactly `text` (read with read()). */
static int echoes(int fd, const char *text)
{
	size_t len = strlen(text), got = 0;
	char buf[512];
	while (got < len) {
		ssize_t n = read(fd, buf + got, len - got);
		if (n <= 0)
			return 0;
		got += n;
	}
	return memcmp(buf, text, len) == 0;
}

/* The TLS stream is intact: a write goes out and comes back decrypted
 * (plaintext slipped into it would have made the server fail). */
static int still_works(int fd)
{
	return write(fd, "ping", 4) == 4 && echoes(fd, "ping");
}

static const char *tls_error(int fd)
{
	static char text[256];
	socklen_t len = sizeof(text);
	text[0] = 0;
	getsockopt(fd, IPPROTO_TLS, TLS_ERROR, text, &len);
	return text;
}

/* ---------------------------------------------------------------------
 * stdio: its streams write with the C library's internal write, which no
 * preloaded library sees. A TLS socket never takes a descriptor number a
 * stdio stream uses (0, 1, 2 and any open FILE's).
 * ------------------------------------------------------------------- */

static void stdio_streams(void)
{
	int fd = tls_open();
	errno = 0;
	int result = dup2(fd, 1);
	check(result < 0 && errno == EPERM, "dup2 onto standard output is EPERM");
	report("  TLS_ERROR: %s\n", tls_error(fd));
	check(strstr(tls_error(fd), "standard output") != NULL, "and TLS_ERROR says why");
	printf("%s printf\n", MARKER);
	puts(MARKER " puts");
	fputs(MARKER " fputs", stdout);
	fflush(stdout);
	standard_descriptors();
	check(still_works(fd), "printf/puts/fputs after it: nothing reached the stream");

	errno = 0;
	result = dup2(fd, 2);
	check(result < 0 && errno == EPERM, "dup2 onto standard error is EPERM");
	fprintf(stderr, "%s fprintf\n", MARKER);
	errno = EIO;
	perror(MARKER " perror");
	standard_descriptors();
	errno = 0;
	result = dup2(fd, 0);
	check(result < 0 && errno == EPERM, "dup2 onto standard input is EPERM");
	standard_descriptors();
	errno = 0;
	result = __dup2(fd, 1);
	check(result < 0 && errno == EPERM, "__dup2 (glibc's exported name) onto standard output is EPERM");
	standard_descriptors();
	errno = 0;
	result = dup3(fd, 1, O_CLOEXEC);
	check(result < 0 && errno == EPERM, "dup3 onto standard output is EPERM");
	printf("%s after dup3\n", MARKER);
	fflush(stdout);
	standard_descriptors();
	check(still_works(fd), "fprintf(stderr)/perror/printf after them: nothing reached the stream");

	/* Any FILE's descriptor, not only 0-2. */
	FILE *log = fopen("/dev/null", "w");
	errno = 0;
	result = dup2(fd, fileno(log));
	check(result < 0 && errno == EPERM, "dup2 onto a descriptor an open FILE uses is EPERM");
	fprintf(log, "%s fprintf to a FILE\n", MARKER);
	fflush(log);
	fclose(log);
	check(still_works(fd), "fprintf to that FILE: nothing reached the stream");
	/* A memory stream has descriptor -1: not a reason to refuse, and -1
	 * stays the kernel's EBADF. */
	char *memory;
	size_t memory_len;
	FILE *in_memory = open_memstream(&memory, &memory_len);
	errno = 0;
	check(dup2(fd, -1) < 0 && errno == EBADF, "dup2 onto -1 is EBADF, with a memory stream open");
	fclose(in_memory);
	free(memory);
	close(fd);
}

/* Standard output closed: the lowest free descriptor is 1, yet no TLS
 * socket may land there (stdout still writes to 1). */
static void lowest_free_descriptor(void)
{
	close(1);
	int fd = tls_socket();
	check(fd > 2, "socket() with descriptor 1 free does not return 1");
	tls_connect(fd);
	printf("%s to a closed stdout\n", MARKER);
	fflush(stdout);
	check(still_works(fd), "printf then: nothing reached the stream");
	standard_descriptors();

	close(1);
	int copy = dup(fd);
	check(copy > 2, "dup() with descriptor 1 free does not return 1");
	printf("%s after dup\n", MARKER);
	fflush(stdout);
	standard_descriptors();
	check(still_works(copy) && still_works(fd), "printf then: nothing reached the stream; both descriptors work");
	close(copy);

	close(1);
	copy = fcntl(fd, F_DUPFD, 0);
	check(copy > 2, "fcntl(F_DUPFD, 0) with descriptor 1 free returns a descriptor above 2");
	int flags = fcntl(copy, F_GETFD);
	check(flags >= 0 && (flags & FD_CLOEXEC), "and it is close-on-exec");
	printf("%s after F_DUPFD\n", MARKER);
	fflush(stdout);
	standard_descriptors();
	check(still_works(copy), "printf then: nothing reached the stream");
	close(copy);

	/* glibc's exported __fcntl: the copy is the TLS socket too, not a
	 * bare TCP one; __close forgets it. */
	close(1);
	copy = __fcntl(fd, F_DUPFD, 0);
	check(copy > 2, "__fcntl(F_DUPFD, 0) with descriptor 1 free returns a descriptor above 2");
	standard_descriptors();
	check(write(copy, MARKER " on the __fcntl copy", strlen(MARKER) + 20) == (ssize_t)strlen(MARKER) + 20 &&
		      echoes(fd, MARKER " on the __fcntl copy"),
	      "a write on the __fcntl copy goes through TLS");
	check(__close(copy) == 0, "__close of the copy");
	/* The lowest free number is the copy's again: a pipe takes it. */
	int pipe_fds[2];
	char back[5] = "";
	check(pipe(pipe_fds) == 0 && pipe_fds[0] == copy, "a pipe takes the number the copy had");
	check(write(pipe_fds[1], "plain", 5) == 5 && read(pipe_fds[0], back, 5) == 5 && memcmp(back, "plain", 5) == 0,
	      "and it is a plain pipe: __close forgot the TLS copy");
	close(pipe_fds[0]);
	close(pipe_fds[1]);
	close(fd);

	/* __connect: connects through TLS. */
	fd = tls_socket();
	struct sockaddr_in relay = loopback(relay_port);
	check(__connect(fd, (struct sockaddr *)&relay, sizeof(relay)) == 0, "__connect (glibc's exported name)");
	connections++;
	check(still_works(fd), "and the connection is TLS");
	close(fd);

	/* A FILE whose descriptor was closed under it keeps writing to that
	 * number. */
	FILE *log = fopen("/dev/null", "w");
	int number = fileno(log);
	close(number);
	fd = tls_socket();
	check(fd != number, "socket() does not take the number of a FILE whose descriptor was closed");
	tls_connect(fd);
	fprintf(log, "%s to that FILE\n", MARKER);
	fflush(log);
	fclose(log);
	check(still_works(fd), "fprintf to that FILE: nothing reached the stream");
	close(fd);
}

static size_t slurp(const char *path, char *buf, size_t size)
{
	FILE *f = fopen(path, "r");
	size_t n = f ? fread(buf, 1, size, f) : 0;
	if (f)
		fclose(f);
	return n;
}

/* accept(): the listening socket's helper thread accepts the TCP
 * connection (at the lowest free descriptor) and handshakes on it before
 * the program sees it. */
static void accepted(int server_port, int server_relay_port, const char *cert, const char *key)
{
	static char chain[8192], private_key[8192];
	size_t chain_len = slurp(cert, chain, sizeof(chain)), key_len = slurp(key, private_key, sizeof(private_key));
	int listener = socket(AF_INET, SOCK_STREAM, IPPROTO_TLS);
	struct sockaddr_in here = loopback(server_port), relay = loopback(server_relay_port);
	check(setsockopt(listener, IPPROTO_TLS, TLS_CERTIFICATE_CHAIN, chain, chain_len) == 0 &&
		      setsockopt(listener, IPPROTO_TLS, TLS_PRIVATE_KEY, private_key, key_len) == 0 &&
		      bind(listener, (struct sockaddr *)&here, sizeof(here)) == 0 && listen(listener, 8) == 0,
	      "a listening TLS socket with its own certificate");
	int client = tls_socket(); /* before: descriptor 1 is for the server's side */
	close(1);
	check(connect(client, (struct sockaddr *)&relay, sizeof(relay)) == 0, "a client connects to it through a relay");
	server_connections++;
	int fd = accept(listener, NULL, NULL);
	check(fd > 2, "accept() with descriptor 1 free does not return 1");
	printf("%s to a closed stdout, from the server\n", MARKER);
	fflush(stdout);
	standard_descriptors();
	check(write(fd, "hello", 5) == 5 && echoes(client, "hello"), "the client reads what the server sends: nothing else reached the stream");
	char got[4] = "";
	check(write(client, "ping", 4) == 4 && read(fd, got, 4) == 4 && memcmp(got, "ping", 4) == 0, "and the server what the client sends");
	close(client);
	close(fd);
	close(listener);
}

static void stdio_on_the_descriptor(void)
{
	int fd = tls_open();
	errno = 0;
	check(fdopen(fd, "w") == NULL && errno == EOPNOTSUPP, "fdopen of a TLS socket is EOPNOTSUPP");
	errno = 0;
	check(_IO_fdopen(fd, "w") == NULL && errno == EOPNOTSUPP, "_IO_fdopen of a TLS socket is EOPNOTSUPP");
	check(still_works(fd), "the connection still works");
	close(fd);
}

/* Handing the descriptor to another program: posix_spawn's dup2 runs in
 * the child, around the library; SCM_RIGHTS gives another process the
 * bare TCP socket. */
static void handing_over(void)
{
	int fd = tls_open();
	posix_spawn_file_actions_t actions;
	posix_spawn_file_actions_init(&actions);
	int result = posix_spawn_file_actions_adddup2(&actions, fd, 1);
	check(result == EPERM, "posix_spawn_file_actions_adddup2 of a TLS socket is EPERM");
	if (result == 0) {
		char *argv[] = { "echo", MARKER " from a spawned program", NULL };
		pid_t pid;
		if (posix_spawn(&pid, "/bin/echo", &actions, NULL, argv, NULL) == 0)
			waitpid(pid, NULL, 0);
	}
	posix_spawn_file_actions_destroy(&actions);
	posix_spawn_file_actions_init(&actions);
	check(posix_spawn_file_actions_adddup2(&actions, fd, fd) == EPERM,
	      "posix_spawn_file_actions_adddup2 of a TLS socket onto itself (inherit) is EPERM");
	posix_spawn_file_actions_destroy(&actions);

	int pair[2];
	socketpair(AF_UNIX, SOCK_STREAM, 0, pair);
	union {
		struct cmsghdr header;
		char space[CMSG_SPACE(sizeof(int))];
	} control;
	memset(&control, 0, sizeof(control));
	struct iovec one = { "x", 1 };
	struct msghdr message = { .msg_iov = &one, .msg_iovlen = 1, .msg_control = &control, .msg_controllen = sizeof(control) };
	struct cmsghdr *rights = CMSG_FIRSTHDR(&message);
	rights->cmsg_level = SOL_SOCKET;
	rights->cmsg_type = SCM_RIGHTS;
	rights->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(rights), &fd, sizeof(int));
	errno = 0;
	result = sendmsg(pair[0], &message, 0);
	check(result < 0 && errno == EPERM, "sendmsg of a TLS socket with SCM_RIGHTS is EPERM");
	if (result > 0) { /* what a receiving process could do with it */
		char byte;
		union {
			struct cmsghdr header;
			char space[CMSG_SPACE(sizeof(int))];
		} received;
		struct iovec in = { &byte, 1 };
		struct msghdr got = { .msg_iov = &in, .msg_iovlen = 1, .msg_control = &received, .msg_controllen = sizeof(received) };
		if (recvmsg(pair[1], &got, 0) == 1 && CMSG_FIRSTHDR(&got)) {
			int bare;
			memcpy(&bare, CMSG_DATA(CMSG_FIRSTHDR(&got)), sizeof(int));
			if (write(bare, MARKER " through SCM_RIGHTS", 28) < 0)
				report("  write on the received descriptor: %s\n", strerror(errno));
			close(bare);
		}
	}
	struct mmsghdr many = { .msg_hdr = message };
	errno = 0;
	check(sendmmsg(pair[0], &many, 1, 0) < 0 && errno == EPERM, "sendmmsg of a TLS socket with SCM_RIGHTS is EPERM");
	/* Other descriptors still pass. */
	int other = dup(devnull);
	memcpy(CMSG_DATA(rights), &other, sizeof(int));
	check(sendmsg(pair[0], &message, 0) == 1, "sendmsg with SCM_RIGHTS of another descriptor works");
	close(other);
	close(pair[0]);
	close(pair[1]);
	check(still_works(fd), "the connection still works");
	close(fd);
}

/* ---------------------------------------------------------------------
 * Formatted output straight to the descriptor: encrypted.
 * ------------------------------------------------------------------- */

static int through_vdprintf(int fd, const char *format, ...)
{
	va_list ap;
	va_start(ap, format);
	int n = vdprintf(fd, format, ap);
	va_end(ap);
	return n;
}

static int through_vdprintf_chk(int fd, const char *format, ...)
{
	va_list ap;
	va_start(ap, format);
	int n = __vdprintf_chk(fd, 1, format, ap);
	va_end(ap);
	return n;
}

static void formatted(void)
{
	int fd = tls_open();
	const char *expected = MARKER " dprintf 42 2.5 x\n";
	check(dprintf(fd, "%s dprintf %d %.1f %c\n", MARKER, 42, 2.5, 'x') == (int)strlen(expected) && echoes(fd, expected),
	      "dprintf goes through TLS (the peer decrypts the formatted text)");
	expected = MARKER " vdprintf 7\n";
	check(through_vdprintf(fd, "%s vdprintf %d\n", MARKER, 7) == (int)strlen(expected) && echoes(fd, expected),
	      "vdprintf goes through TLS");
	expected = MARKER " __dprintf_chk 1.25\n";
	check(__dprintf_chk(fd, 1, "%s __dprintf_chk %.2f\n", MARKER, 1.25) == (int)strlen(expected) && echoes(fd, expected),
	      "__dprintf_chk (dprintf under _FORTIFY_SOURCE) goes through TLS");
	expected = MARKER " __vdprintf_chk\n";
	check(through_vdprintf_chk(fd, "%s __vdprintf_chk\n", MARKER) == (int)strlen(expected) && echoes(fd, expected),
	      "__vdprintf_chk goes through TLS");
	static char big[20000];
	memset(big, 'b', sizeof(big) - 1);
	memcpy(big, MARKER, strlen(MARKER));
	int n = dprintf(fd, "%s", big);
	size_t got = 0;
	char buf[4096];
	int same = 1;
	while (n == (int)strlen(big) && got < strlen(big)) {
		ssize_t r = read(fd, buf, sizeof(buf));
		if (r <= 0)
			break;
		same &= memcmp(buf, big + got, r) == 0;
		got += r;
	}
	check(n == (int)strlen(big) && got == strlen(big) && same, "dprintf of 20,000 bytes (more than one record) comes back whole");
	check(still_works(fd), "the connection still works");
	close(fd);
}

/* ---------------------------------------------------------------------
 * Positioned and vectored I/O. For sockets, offset -1 of preadv2/pwritev2
 * means "the current position": a plain read or write.
 * ------------------------------------------------------------------- */

static void positioned(void)
{
	int fd = tls_open();
	struct iovec two[2] = { { MARKER, strlen(MARKER) }, { " pwritev2\n", 10 } };
	check(pwritev2(fd, two, 2, -1, 0) == (ssize_t)strlen(MARKER) + 10 && echoes(fd, MARKER " pwritev2\n"),
	      "pwritev2(offset -1) goes through TLS");
	check(pwritev64v2(fd, two, 2, -1, 0) == (ssize_t)strlen(MARKER) + 10 && echoes(fd, MARKER " pwritev2\n"),
	      "pwritev64v2(offset -1) goes through TLS");
	check(pwritev2(fd, two, 2, -1, RWF_NOWAIT) == (ssize_t)strlen(MARKER) + 10 && echoes(fd, MARKER " pwritev2\n"),
	      "pwritev2(offset -1, RWF_NOWAIT) goes through TLS");
	errno = 0;
	check(pwritev2(fd, two, 2, 0, 0) < 0 && errno == ESPIPE, "pwritev2 at an offset is ESPIPE");
	errno = 0;
	check(pwritev2(fd, two, 2, -1, 0x40000000) < 0 && errno == EOPNOTSUPP, "pwritev2 with an unknown flag is EOPNOTSUPP");
	errno = 0;
	check(pwritev(fd, two, 2, 0) < 0 && errno == ESPIPE, "pwritev is ESPIPE");
	errno = 0;
	check(pwritev(fd, two, 2, -1) < 0 && errno == EINVAL, "pwritev(offset -1) is EINVAL");
	errno = 0;
	check(pwrite(fd, MARKER, strlen(MARKER), 0) < 0 && errno == ESPIPE, "pwrite is ESPIPE");
	errno = 0;
	check(pwrite64(fd, MARKER, strlen(MARKER), 0) < 0 && errno == ESPIPE, "pwrite64 is ESPIPE");

	char a[3], b[5];
	struct iovec parts[2] = { { a, 3 }, { b, 5 } };
	check(write(fd, "abcdefgh", 8) == 8 && preadv2(fd, parts, 2, -1, 0) == 8 && memcmp(a, "abc", 3) == 0 &&
		      memcmp(b, "defgh", 5) == 0,
	      "preadv2(offset -1) reads the decrypted stream");
	check(write(fd, "abcdefgh", 8) == 8 && preadv64v2(fd, parts, 2, -1, 0) == 8 && memcmp(b, "defgh", 5) == 0,
	      "preadv64v2(offset -1) reads the decrypted stream");
	errno = 0;
	check(preadv2(fd, parts, 2, -1, RWF_NOWAIT) < 0 && errno == EAGAIN, "preadv2(RWF_NOWAIT) with nothing to read is EAGAIN");
	errno = 0;
	check(preadv2(fd, parts, 2, 0, 0) < 0 && errno == ESPIPE, "preadv2 at an offset is ESPIPE");
	errno = 0;
	check(preadv(fd, parts, 2, 0) < 0 && errno == ESPIPE, "preadv is ESPIPE");
	errno = 0;
	check(pread(fd, a, 3, 0) < 0 && errno == ESPIPE, "pread is ESPIPE");

	check(writev(fd, two, 2) == (ssize_t)strlen(MARKER) + 10 && readv(fd, parts, 2) == 8 && memcmp(a, MARKER, 3) == 0 &&
		      echoes(fd, MARKER " pwritev2\n" + 8),
	      "writev and readv go through TLS");
	check(__write(fd, MARKER " __write", strlen(MARKER) + 8) == (ssize_t)strlen(MARKER) + 8 &&
		      echoes(fd, MARKER " __write"),
	      "__write goes through TLS");
	check(__send(fd, MARKER " __send", strlen(MARKER) + 7, 0) == (ssize_t)strlen(MARKER) + 7 && __read(fd, a, 3) == 3 &&
		      memcmp(a, MARKER, 3) == 0 && echoes(fd, MARKER " __send" + 3),
	      "__send and __read go through TLS");
	struct iovec line = { MARKER " sendmmsg", strlen(MARKER) + 9 };
	struct mmsghdr out = { .msg_hdr = { .msg_iov = &line, .msg_iovlen = 1 } };
	char c[64] = "";
	struct iovec in = { c, strlen(MARKER) + 9 };
	struct mmsghdr back = { .msg_hdr = { .msg_iov = &in, .msg_iovlen = 1 } };
	check(sendmmsg(fd, &out, 1, 0) == 1 && recvmmsg(fd, &back, 1, MSG_WAITALL, NULL) == 1 &&
		      strcmp(c, MARKER " sendmmsg") == 0,
	      "sendmmsg and recvmmsg go through TLS");
	check(still_works(fd), "the connection still works");
	close(fd);
}

/* ---------------------------------------------------------------------
 * Calls where the kernel moves the bytes: refused.
 * ------------------------------------------------------------------- */

static void kernel_copies(void)
{
	int fd = tls_open();
	char path[] = "/tmp/tls-plaintext-XXXXXX";
	int file = mkstemp(path);
	unlink(path);
	check(write(file, MARKER " in a file\n", strlen(MARKER) + 11) > 0, "a file holding the marker");
	lseek(file, 0, SEEK_SET);
	errno = 0;
	check(sendfile(fd, file, NULL, 64) < 0 && errno == EINVAL, "sendfile to a TLS socket is EINVAL");
	loff_t from = 0;
	errno = 0;
	check(copy_file_range(file, &from, fd, NULL, 64, 0) < 0 && errno == EINVAL, "copy_file_range to a TLS socket is EINVAL");
	int pipe_fds[2], other[2];
	pipe(pipe_fds);
	pipe(other);
	check(write(pipe_fds[1], MARKER " in a pipe\n", strlen(MARKER) + 11) > 0, "a pipe holding the marker");
	errno = 0;
	check(splice(pipe_fds[0], NULL, fd, NULL, 64, 0) < 0 && errno == EINVAL, "splice to a TLS socket is EINVAL");
	errno = 0;
	check(splice(fd, NULL, other[1], NULL, 64, 0) < 0 && errno == EINVAL, "splice from a TLS socket is EINVAL");
	errno = 0;
	check(tee(pipe_fds[0], fd, 64, 0) < 0 && errno == EINVAL, "tee to a TLS socket is EINVAL (the kernel's: not a pipe)");
	struct iovec text = { MARKER, strlen(MARKER) };
	errno = 0;
	check(vmsplice(fd, &text, 1, 0) < 0 && errno == EBADF, "vmsplice to a TLS socket is EBADF (the kernel's: not a pipe)");
	char proc_path[64];
	snprintf(proc_path, sizeof(proc_path), "/proc/self/fd/%d", fd);
	errno = 0;
	check(open(proc_path, O_WRONLY) < 0 && errno == ENXIO, "opening /proc/self/fd/N of a TLS socket is ENXIO (the kernel's)");
	struct aiocb aio = { .aio_fildes = fd, .aio_buf = MARKER, .aio_nbytes = strlen(MARKER) };
	errno = 0;
	check(aio_write(&aio) < 0 && errno == EINVAL, "aio_write to a TLS socket is EINVAL");
	close(file);
	close(pipe_fds[0]);
	close(pipe_fds[1]);
	close(other[0]);
	close(other[1]);
	check(still_works(fd), "the connection still works");
	close(fd);
}

int main(int argc, char **argv)
{
	if (argc != 6)
		return 2;
	relay_port = atoi(argv[1]);
	/* On a library that lets plaintext through, the server drops the
	 * connection: the other cases must still run. */
	signal(SIGPIPE, SIG_IGN);
	if (fcntl(1, F_DUPFD_CLOEXEC, REPORT_FD) != REPORT_FD)
		return 2;
	devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
	standard_descriptors();

	stdio_streams();
	lowest_free_descriptor();
	accepted(atoi(argv[2]), atoi(argv[3]), argv[4], argv[5]);
	stdio_on_the_descriptor();
	handing_over();
	formatted();
	positioned();
	kernel_copies();

	report("connections: %d\n", connections);
	report("server connections: %d\n", server_connections);
	report("tls-plaintext: %d failure(s)\n", failures);
	return failures != 0;
}
