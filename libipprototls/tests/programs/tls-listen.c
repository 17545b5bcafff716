/* The server side of libipprototls beyond what tests/vm/tls-server.c
 * checks: listening sockets are refused without a certificate to present,
 * accept() returns only handshaken connections (idle, garbage, untrusted
 * and unauthenticated clients never come out of it), readiness of a
 * listening socket with poll, select and edge-triggered epoll, and the
 * options of accepted connections. The clients are IPPROTO_TLS sockets of
 * this same process (and plain TCP ones for the garbage), all on
 * 127.0.0.1.
 *
 * usage: tls-listen refused
 *          policy without [[server.identities]]: listen() is EACCES;
 *        tls-listen own CHAIN KEY
 *          policy with application_identities and no server identity:
 *          listen() works once the socket has its own certificate (for
 *          api.test);
 *        tls-listen main CHAIN KEY
 *          policy with [[server.identities]] (localhost first, api.test)
 *          and application_identities, handshake_timeout_secs = 2:
 *          CHAIN/KEY is the clients' certificate for
 *          TLS_REQUEST_PEER_AUTH. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <unistd.h>
#include "../../../include/in_tls.h"
#include "../../../tests/vm/check.h"

static char chain[16384], key[16384];
static size_t chain_len, key_len;

static size_t slurp(const char *path, char *buf, size_t size)
{
	FILE *f = fopen(path, "r");
	size_t n = f ? fread(buf, 1, size, f) : 0;
	if (f)
		fclose(f);
	return n;
}

static struct sockaddr_in loopback(int port)
{
	struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons(port) };
	addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	return addr;
}

/* An IPPROTO_TLS socket bound to 127.0.0.1 on a port the kernel picks. */
static int bound(int *port)
{
	int fd = socket(AF_INET, SOCK_STREAM, IPPROTO_TLS);
	struct sockaddr_in addr = loopback(0);
	socklen_t len = sizeof(addr);

	check(fd >= 0 && bind(fd, (struct sockaddr *)&addr, sizeof(addr)) == 0, "bind() to 127.0.0.1, port 0 (no [[server.listen]]: the program's own address)");
	check(getsockname(fd, (struct sockaddr *)&addr, &len) == 0 && addr.sin_port != 0, "getsockname() gives the port");
	*port = ntohs(addr.sin_port);
	return fd;
}

static int tls_error_has(int fd, const char *text)
{
	char error[1024] = "";
	socklen_t len = sizeof(error);
	if (getsockopt(fd, IPPROTO_TLS, TLS_ERROR, error, &len) != 0)
		return 0;
	printf("  TLS_ERROR: %s\n", error);
	return strstr(error, text) != NULL;
}

static int text_option(int fd, int name, const char *expected)
{
	char value[1024] = "";
	socklen_t len = sizeof(value);
	if (getsockopt(fd, IPPROTO_TLS, name, value, &len) != 0)
		return 0;
	printf("  option %d: '%s'\n", name, value);
	return strcmp(value, expected) == 0;
}

/* A client socket of this process, set up for NAME, with CERT if asked. */
static int client(const char *name, int nonblocking, int with_certificate, const char *alpn)
{
	int fd = socket(AF_INET, SOCK_STREAM | (nonblocking ? SOCK_NONBLOCK : 0), IPPROTO_TLS);
	setsockopt(fd, IPPROTO_TLS, TLS_HOSTNAME, name, strlen(name) + 1);
	if (with_certificate) {
		check(setsockopt(fd, IPPROTO_TLS, TLS_CERTIFICATE_CHAIN, chain, chain_len) == 0 &&
			      setsockopt(fd, IPPROTO_TLS, TLS_PRIVATE_KEY, key, key_len) == 0,
		      "the client's own certificate (application_identities)");
	}
	if (alpn)
		setsockopt(fd, IPPROTO_TLS, TLS_ALPN, alpn, strlen(alpn) + 1);
	return fd;
}

static int connect_to(int fd, int port)
{
	struct sockaddr_in addr = loopback(port);
	return connect(fd, (struct sockaddr *)&addr, sizeof(addr));
}

static int readable(int fd, int ms)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	return poll(&p, 1, ms) == 1 && (p.revents & POLLIN);
}

/* Waits for the peer to end the connection: the server dropped it. */
static int dropped(int fd)
{
	char buf[256];
	for (int i = 0; i < 50; i++) {
		if (!readable(fd, 100))
			continue;
		ssize_t n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
		if (n == 0 || (n < 0 && errno != EAGAIN))
			return 1;
	}
	return 0;
}

static void refused(void)
{
	int port, fd = bound(&port);
	check(listen(fd, 8) == -1 && errno == EACCES, "listen() with no certificate to present: EACCES");
	check(tls_error_has(fd, "[[server.identities]]"), "TLS_ERROR names [[server.identities]]");
	check(setsockopt(fd, IPPROTO_TLS, TLS_CERTIFICATE_CHAIN, "x", 1) == -1 && errno == EPERM,
	      "TLS_CERTIFICATE_CHAIN without application_identities: EPERM");
	int tcp = socket(AF_INET, SOCK_STREAM, 0);
	check(connect_to(tcp, port) == -1 && errno == ECONNREFUSED, "nothing listens in plaintext: ECONNREFUSED");
	close(tcp);
	close(fd);
}

static void own(void)
{
	int port, fd = bound(&port);
	check(listen(fd, 8) == -1 && errno == EACCES, "listen() before the socket has its certificate: EACCES");
	check(setsockopt(fd, IPPROTO_TLS, TLS_CERTIFICATE_CHAIN, chain, chain_len) == 0 &&
		      setsockopt(fd, IPPROTO_TLS, TLS_PRIVATE_KEY, key, key_len) == 0,
	      "TLS_CERTIFICATE_CHAIN and TLS_PRIVATE_KEY on the listening socket");
	check(listen(fd, 8) == 0, "listen() with the socket's own certificate");
	int c = client("api.test", 0, 0, NULL);
	check(connect_to(c, port) == 0, "a client verifying api.test connects");
	check(text_option(c, TLS_PEER_IDENTITY, "CN=api.test"), "the client sees the socket's own certificate");
	int a = accept(fd, NULL, NULL);
	check(a >= 0 && text_option(a, TLS_HOSTNAME, "api.test"), "accept(); TLS_HOSTNAME is the client's SNI");
	close(a);
	close(c);
	close(fd);
}

static void main_checks(void)
{
	int port, listener = bound(&port);
	/* Registered before listen(): the registration must follow the
	 * descriptor to what listen() makes of it. */
	int ep = epoll_create1(0);
	struct epoll_event ev = { .events = EPOLLIN | EPOLLET, .data.u64 = 42 }, got;
	check(epoll_ctl(ep, EPOLL_CTL_ADD, listener, &ev) == 0, "epoll_ctl(ADD) before listen()");
	check(listen(listener, 16) == 0, "listen() (the policy's identities)");
	check(listen(listener, 32) == 0, "listen() again: a new backlog");
	check(!readable(listener, 0), "nothing connected: the listening socket is not readable");

	/* Clients that never finish a handshake. */
	int idle = socket(AF_INET, SOCK_STREAM, 0);
	int garbage = socket(AF_INET, SOCK_STREAM, 0);
	check(connect_to(idle, port) == 0 && connect_to(garbage, port) == 0, "two plain TCP clients connect");
	const char junk[] = "GET / HTTP/1.0\r\n\r\n";
	check(send(garbage, junk, sizeof(junk) - 1, 0) == (ssize_t)sizeof(junk) - 1, "one sends plaintext HTTP");
	check(!readable(listener, 500), "poll: not readable for TCP connections without a handshake");
	check(fcntl(listener, F_SETFL, fcntl(listener, F_GETFL) | O_NONBLOCK) == 0, "fcntl(O_NONBLOCK) on the listening socket");
	check(accept4(listener, NULL, NULL, SOCK_NONBLOCK) == -1 && errno == EAGAIN,
	      "non-blocking accept4(): EAGAIN, not the TCP connections");
	check(dropped(garbage), "the plaintext client is disconnected");
	fd_set set;
	struct timeval tv = { 0, 100000 };
	FD_ZERO(&set);
	FD_SET(listener, &set);
	check(select(listener + 1, &set, NULL, NULL, &tv) == 0, "select: not readable either");
	check(epoll_wait(ep, &got, 1, 0) == 0, "epoll (edge-triggered): nothing yet");

	/* A TLS client, non-blocking: its handshake moves on in poll. */
	int c1 = client("localhost", 1, 0, NULL);
	check(connect_to(c1, port) == -1 && errno == EINPROGRESS, "a non-blocking TLS client: EINPROGRESS");
	int seen = 0, connected = 0;
	for (int i = 0; i < 100 && !seen; i++) {
		/* The client until its handshake is done (then it stays
		 * writable, which would end every wait at once). */
		struct pollfd p[2] = { { .fd = listener, .events = POLLIN }, { .fd = connected ? -1 : c1, .events = POLLOUT } };
		if (poll(p, 2, 100) < 0)
			break;
		seen = p[0].revents & POLLIN;
		connected |= p[1].revents & POLLOUT;
	}
	check(seen, "poll: readable once the handshake is done");
	check(epoll_wait(ep, &got, 1, 1000) == 1 && (got.events & EPOLLIN) && got.data.u64 == 42, "epoll: EPOLLIN with the program's data");
	check(epoll_wait(ep, &got, 1, 0) == 0, "epoll (edge-triggered): once");
	tv.tv_usec = 0;
	FD_ZERO(&set);
	FD_SET(listener, &set);
	check(select(listener + 1, &set, NULL, NULL, &tv) == 1 && FD_ISSET(listener, &set), "select: readable");

	struct sockaddr_in peer, mine;
	socklen_t peer_len = sizeof(peer), mine_len = sizeof(mine);
	int a1 = accept4(listener, (struct sockaddr *)&peer, &peer_len, SOCK_NONBLOCK);
	check(a1 >= 0, "accept4(SOCK_NONBLOCK) returns the handshaken connection");
	check(getsockname(c1, (struct sockaddr *)&mine, &mine_len) == 0 && peer_len == sizeof(peer) &&
		      peer.sin_family == AF_INET && peer.sin_port == mine.sin_port &&
		      peer.sin_addr.s_addr == htonl(INADDR_LOOPBACK),
	      "accept4() gives the client's address");
	check((fcntl(a1, F_GETFL) & O_NONBLOCK) && (fcntl(a1, F_GETFD) & FD_CLOEXEC), "the accepted socket: non-blocking, close-on-exec");
	check(!readable(listener, 0), "accepted: the listening socket is not readable any more");
	check(text_option(a1, TLS_HOSTNAME, "localhost"), "TLS_HOSTNAME on the accepted socket: the client's SNI");
	check(text_option(a1, TLS_PEER_IDENTITY, ""), "TLS_PEER_IDENTITY: empty, no client certificate asked for");
	check(text_option(c1, TLS_PEER_IDENTITY, "CN=localhost"), "the client got the first identity (localhost)");
	check(send(c1, "ping", 4, 0) == 4 && readable(a1, 5000) && recv(a1, (char[8]){ 0 }, 8, 0) == 4, "client to server");
	char buf[8] = "";
	check(send(a1, "pong", 4, 0) == 4 && readable(c1, 5000) && recv(c1, buf, sizeof(buf), 0) == 4 && memcmp(buf, "pong", 4) == 0,
	      "server to client");
	check(getpeername(listener, (struct sockaddr *)&peer, &peer_len) == -1 && errno == ENOTCONN, "getpeername(listening socket): ENOTCONN");
	int on = 0;
	socklen_t on_len = sizeof(on);
	check(getsockopt(listener, SOL_SOCKET, SO_ACCEPTCONN, &on, &on_len) == 0 && on == 1, "SO_ACCEPTCONN is 1");
	check(read(listener, buf, sizeof(buf)) == -1 && errno == ENOTCONN, "read(listening socket): ENOTCONN");
	check(accept(a1, NULL, NULL) == -1 && errno == EINVAL, "accept() on a connected socket: EINVAL");
	check(listen(c1, 1) == -1 && errno == EOPNOTSUPP, "listen() on a connected socket: EOPNOTSUPP");
	check(dropped(idle), "the idle TCP client is disconnected at the handshake timeout");
	close(a1);
	close(c1);
	close(idle);
	close(garbage);

	/* ALPN, client authentication and a served name, set before listen. */
	check(fcntl(listener, F_SETFL, fcntl(listener, F_GETFL) & ~O_NONBLOCK) == 0, "the listening socket blocking again");

	int port2, l2 = bound(&port2);
	int one = 1;
	check(setsockopt(l2, IPPROTO_TLS, TLS_ALPN, "h2,http/1.1", 12) == 0 &&
		      setsockopt(l2, IPPROTO_TLS, TLS_REQUEST_PEER_AUTH, &one, sizeof(one)) == 0 &&
		      setsockopt(l2, IPPROTO_TLS, TLS_HOSTNAME, "localhost", 10) == 0,
	      "TLS_ALPN, TLS_REQUEST_PEER_AUTH, TLS_HOSTNAME on the listening socket");
	check(listen(l2, 8) == 0, "listen()");
	check(setsockopt(l2, IPPROTO_TLS, TLS_ALPN, "h2", 3) == -1 && errno == EISCONN, "options are fixed once listening: EISCONN");
	int other_name = client("api.test", 0, 1, NULL);
	check(connect_to(other_name, port2) == -1 && errno == EPROTO, "a client asking for another name: EPROTO");
	int anonymous = client("localhost", 0, 0, NULL);
	connect_to(anonymous, port2); /* TLS 1.3: the client may finish first */
	check(!readable(l2, 500), "clients without the name or a certificate do not make it readable");
	int c4 = client("localhost", 0, 1, "http/1.1");
	check(connect_to(c4, port2) == 0, "a client with a certificate connects");
	int a4 = accept(l2, NULL, NULL);
	check(a4 >= 0, "blocking accept() returns it: the failed handshakes never came out");
	check(text_option(a4, TLS_PEER_IDENTITY, "CN=localhost"), "TLS_PEER_IDENTITY: the client's certificate");
	check(text_option(a4, TLS_ALPN, "http/1.1"), "TLS_ALPN: the protocol agreed on");
	check(dropped(anonymous), "the client without a certificate is disconnected");
	close(a4);
	close(c4);
	close(anonymous);
	close(other_name);
	close(l2);

	/* Closing a listening socket drops what it had not handed out. */
	int c5 = client("localhost", 0, 0, NULL);
	check(connect_to(c5, port) == 0 && readable(listener, 2000), "a client handshakes, nobody accepts it");
	close(listener);
	close(ep);
	check(dropped(c5), "close() of the listening socket ends that connection");
	close(c5);
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc == 4) {
		chain_len = slurp(argv[2], chain, sizeof(chain));
		key_len = slurp(argv[3], key, sizeof(key));
		check(chain_len > 0 && key_len > 0, "read the certificate and key");
	}
	if (argc == 2 && strcmp(argv[1], "refused") == 0)
		refused();
	else if (argc == 4 && strcmp(argv[1], "own") == 0)
		own();
	else if (argc == 4 && strcmp(argv[1], "main") == 0)
		main_checks();
	else {
		fprintf(stderr, "usage: tls-listen refused | own CHAIN KEY | main CHAIN KEY\n");
		return 2;
	}
	printf("tls-listen: %d failure(s)\n", failures);
	return failures != 0;
}
