/* The life of an IPPROTO_TLS descriptor under libipprototls, beyond what
 * the guest programs check: connecting again after a refusal, descriptors
 * shared by dup, close_range, the
 * calls refused so that nothing bypasses TLS, and what getsockopt says.
 * (Trying each address of a name in turn is a unit test in conn.rs: no
 * loopback name has two addresses everywhere.)
 * usage: tls-lifecycle PORT CLOSED_PORT
 *   PORT: openssl s_server -www for localhost on 127.0.0.1 only;
 *   CLOSED_PORT: a loopback port nothing listens on. */
#define _GNU_SOURCE
#include <aio.h>
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>
#include "../../../include/in_tls.h"
#include "../../../tests/vm/check.h"

static struct sockaddr_in loopback(int port)
{
	struct sockaddr_in in = { .sin_family = AF_INET, .sin_port = htons(port) };
	inet_pton(AF_INET, "127.0.0.1", &in.sin_addr);
	return in;
}

/* GET / on fd and the reply through read_fd; 1 if it is a whole page. */
static int fetch(int fd, int read_fd)
{
	const char *request = "GET / HTTP/1.0\r\n\r\n";
	if (write(fd, request, strlen(request)) != (ssize_t)strlen(request))
		return 0;
	static char page[65536];
	size_t got = 0;
	ssize_t n;
	while (got < sizeof(page) - 1 && (n = read(read_fd, page + got, sizeof(page) - 1 - got)) > 0)
		got += n;
	page[got] = 0;
	return strncmp(page, "HTTP/1.0 200 ok", 15) == 0 && strstr(page, "</HTML>") != NULL;
}

int main(int argc, char **argv)
{
	if (argc != 3)
		return 2;
	struct sockaddr_in good = loopback(atoi(argv[1])), refused = loopback(atoi(argv[2]));

	/* Connect again after a refusal: a fresh TCP socket under the same
	 * descriptor number. */
	int fd = socket(AF_INET, SOCK_STREAM, IPPROTO_TLS);
	setsockopt(fd, IPPROTO_TLS, TLS_HOSTNAME, "localhost", 10);
	errno = 0;
	check(connect(fd, (struct sockaddr *)&refused, sizeof(refused)) < 0 && errno == ECONNREFUSED,
	      "nothing listening: ECONNREFUSED");
	char text[256] = "";
	socklen_t len = sizeof(text);
	getsockopt(fd, IPPROTO_TLS, TLS_ERROR, text, &len);
	printf("TLS_ERROR: %s\n", text);
	check(strstr(text, "refused") != NULL, "TLS_ERROR says the connection was refused");
	check(connect(fd, (struct sockaddr *)&good, sizeof(good)) == 0, "then connecting elsewhere works");
	len = sizeof(text);
	check(getsockopt(fd, IPPROTO_TLS, TLS_ERROR, text, &len) == 0 && len == 1 && text[0] == 0,
	      "and TLS_ERROR is empty again");
	int protocol = 0;
	len = sizeof(protocol);
	check(getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &protocol, &len) == 0 && protocol == IPPROTO_TLS,
	      "SO_PROTOCOL is IPPROTO_TLS");
	len = 4;
	check(getsockopt(fd, IPPROTO_TLS, TLS_PEER_IDENTITY, text, &len) == 0 && len == 4 && strcmp(text, "CN=") == 0,
	      "a string option is cut to the caller's buffer, NUL-terminated");
	long long big = 0;
	len = 2;
	errno = 0;
	check(getsockopt(fd, IPPROTO_TLS, TLS_ID, &big, &len) < 0 && errno == EINVAL, "an integer option that does not fit is EINVAL");

	/* Refused calls: none may put plaintext on the stream. */
	int file = open("/proc/self/exe", O_RDONLY);
	errno = 0;
	check(sendfile(fd, file, NULL, 16) < 0 && errno == EINVAL, "sendfile to a TLS socket is EINVAL");
	close(file);
	errno = 0;
	check(fdopen(fd, "r+") == NULL && errno == EOPNOTSUPP, "fdopen of a TLS socket is EOPNOTSUPP");
	struct { struct cmsghdr header; int fd; } control = { .header = { .cmsg_len = CMSG_LEN(sizeof(int)),
		.cmsg_level = SOL_SOCKET, .cmsg_type = SCM_RIGHTS }, .fd = 0 };
	struct iovec one = { "x", 1 };
	struct msghdr with_fd = { .msg_iov = &one, .msg_iovlen = 1, .msg_control = &control, .msg_controllen = sizeof(control) };
	errno = 0;
	check(sendmsg(fd, &with_fd, 0) < 0 && errno == EOPNOTSUPP, "sendmsg with ancillary data is EOPNOTSUPP");
	errno = 0;
	check(send(fd, "x", 1, MSG_OOB) < 0 && errno == EOPNOTSUPP, "MSG_OOB is EOPNOTSUPP");
	struct aiocb aio = { .aio_fildes = fd, .aio_buf = "x", .aio_nbytes = 1 };
	errno = 0;
	check(aio_write(&aio) < 0 && errno == EINVAL, "aio_write (glibc writes around interposition) is EINVAL");

	/* dup: both descriptors are the one session; closing one leaves it. */
	int copy = dup(fd);
	check(copy >= 0, "dup");
	check(close(fd) == 0, "close the original");
	check(fetch(copy, copy), "the duplicate still carries the session");
	close(copy);

	fd = socket(AF_INET, SOCK_STREAM, IPPROTO_TLS);
	setsockopt(fd, IPPROTO_TLS, TLS_HOSTNAME, "localhost", 10);
	check(connect(fd, (struct sockaddr *)&good, sizeof(good)) == 0, "connect");
	copy = fcntl(fd, F_DUPFD_CLOEXEC, 50);
	check(copy >= 50, "F_DUPFD_CLOEXEC");
	check(fetch(fd, copy), "write on one descriptor, read the reply on its F_DUPFD copy");
	check(close_range(copy, copy, 0) == 0 && close(fd) == 0, "close_range and close");

	/* The other data calls: writev, ppoll, MSG_WAITALL, readv, recvmmsg,
	 * sendmmsg; FIONBIO makes reads non-blocking. */
	fd = socket(AF_INET, SOCK_STREAM, IPPROTO_TLS);
	setsockopt(fd, IPPROTO_TLS, TLS_HOSTNAME, "localhost", 10);
	check(connect(fd, (struct sockaddr *)&good, sizeof(good)) == 0, "connect");
	struct iovec request[2] = { { "GET / HTTP/1.0\r\n", 16 }, { "\r\n", 2 } };
	check(writev(fd, request, 2) == 18, "writev with two buffers");
	struct pollfd p = { .fd = fd, .events = POLLIN };
	struct timespec five = { .tv_sec = 5 };
	check(ppoll(&p, 1, &five, NULL) == 1 && (p.revents & POLLIN), "ppoll sees the reply");
	char status[15];
	check(recv(fd, status, sizeof(status), MSG_WAITALL) == 15 && memcmp(status, "HTTP/1.0 200 ok", 15) == 0,
	      "MSG_WAITALL gets exactly the status line");
	char a[5], b[5];
	struct iovec parts[2] = { { a, 5 }, { b, 5 } };
	check(readv(fd, parts, 2) == 10 && memcmp(a, "\r\nCon", 5) == 0 && memcmp(b, "tent-", 5) == 0,
	      "readv fills two buffers in order");
	char c[8], d[8];
	struct iovec one_c = { c, 8 }, one_d = { d, 8 };
	struct mmsghdr two[2] = { { .msg_hdr = { .msg_iov = &one_c, .msg_iovlen = 1 } },
				  { .msg_hdr = { .msg_iov = &one_d, .msg_iovlen = 1 } } };
	check(recvmmsg(fd, two, 2, MSG_WAITFORONE, NULL) == 2 && two[0].msg_len == 8 && two[1].msg_len == 8 &&
	      memcmp(c, "type: te", 8) == 0 && memcmp(d, "xt/html\r", 8) == 0, "recvmmsg fills two messages in order");
	close(fd);

	fd = socket(AF_INET, SOCK_STREAM, IPPROTO_TLS);
	setsockopt(fd, IPPROTO_TLS, TLS_HOSTNAME, "localhost", 10);
	check(connect(fd, (struct sockaddr *)&good, sizeof(good)) == 0, "connect");
	int on = 1;
	check(ioctl(fd, FIONBIO, &on) == 0, "FIONBIO");
	errno = 0;
	check(read(fd, c, 1) < 0 && errno == EAGAIN, "then a read with nothing to read is EAGAIN at once");
	on = 0;
	ioctl(fd, FIONBIO, &on);
	struct iovec line = { "GET / HTTP/1.0\r\n", 16 }, end = { "\r\n", 2 };
	struct mmsghdr out[2] = { { .msg_hdr = { .msg_iov = &line, .msg_iovlen = 1 } },
				  { .msg_hdr = { .msg_iov = &end, .msg_iovlen = 1 } } };
	check(sendmmsg(fd, out, 2, 0) == 2 && out[0].msg_len == 16 && out[1].msg_len == 2, "sendmmsg sends two messages");
	check(recv(fd, status, sizeof(status), MSG_WAITALL) == 15 && memcmp(status, "HTTP/1.0 200 ok", 15) == 0,
	      "and the server answers the request they make");
	close(fd);

	/* AF_HOSTNAME on an AF_INET6 socket, to a server on 127.0.0.1 only:
	 * the IPv4 address is reached as ::ffff:127.0.0.1 (and, where
	 * localhost is also ::1, after ::1 refuses). */
	struct sockaddr_host host = { .sh_family = AF_HOSTNAME, .sh_port = good.sin_port };
	strcpy((char *)host.sh_addr.name, "localhost");
	fd = socket(AF_INET6, SOCK_STREAM, IPPROTO_TLS);
	check(connect(fd, (struct sockaddr *)&host, sizeof(host)) == 0, "AF_HOSTNAME localhost on an AF_INET6 socket reaches 127.0.0.1");
	check(fetch(fd, fd), "and the page");
	check(shutdown(fd, SHUT_WR) == 0, "shutdown(SHUT_WR) after the peer's close_notify");
	errno = 0;
	check(send(fd, "x", 1, MSG_NOSIGNAL) < 0 && errno == EPIPE, "then a send is EPIPE (SIGPIPE without MSG_NOSIGNAL)");
	close(fd);

	/* Non-blocking connects by name: the name is resolved off the
	 * caller's thread; poll and epoll see the end of it all. */
	fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, IPPROTO_TLS);
	errno = 0;
	check(connect(fd, (struct sockaddr *)&host, sizeof(host)) < 0 && errno == EINPROGRESS,
	      "non-blocking connect to AF_HOSTNAME localhost: EINPROGRESS");
	p = (struct pollfd){ .fd = fd, .events = POLLOUT };
	check(poll(&p, 1, 10000) == 1 && p.revents == POLLOUT, "poll: POLLOUT once resolved, connected and handshaken");
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
	check(fetch(fd, fd), "and the page");
	close(fd);

	fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, IPPROTO_TLS);
	int ep = epoll_create1(0);
	struct epoll_event ev = { .events = EPOLLOUT, .data.u64 = 7 }, got = { 0 };
	check(epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) == 0, "epoll_ctl ADD before connecting");
	errno = 0;
	check(connect(fd, (struct sockaddr *)&host, sizeof(host)) < 0 && errno == EINPROGRESS, "EINPROGRESS");
	check(epoll_wait(ep, &got, 1, 10000) == 1 && got.events == EPOLLOUT && got.data.u64 == 7,
	      "epoll: EPOLLOUT once resolved, connected and handshaken");
	close(ep);
	close(fd);

	/* The policy denies port 9 (tests/run): found after resolving, so
	 * reported as a non-blocking connect's failure. */
	struct sockaddr_host denied = host;
	denied.sh_port = htons(9);
	fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, IPPROTO_TLS);
	errno = 0;
	check(connect(fd, (struct sockaddr *)&denied, sizeof(denied)) < 0 && errno == EINPROGRESS, "EINPROGRESS");
	p = (struct pollfd){ .fd = fd, .events = POLLOUT };
	int error = 0;
	len = sizeof(error);
	check(poll(&p, 1, 10000) == 1 && (p.revents & POLLERR) && getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &len) == 0 &&
	      error == EACCES, "a denied name: POLLERR and SO_ERROR EACCES");
	close(fd);

	fd = socket(AF_INET, SOCK_STREAM, IPPROTO_TLS);
	errno = 0;
	check(shutdown(fd, SHUT_WR) < 0 && errno == ENOTCONN, "shutdown before connect is ENOTCONN");
	errno = 0;
	check(write(fd, "x", 1) < 0 && errno == ENOTCONN, "write before connect is ENOTCONN");
	close(fd);

	printf("tls-lifecycle: %d failure(s)\n", failures);
	return failures != 0;
}
