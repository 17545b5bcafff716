/* A TLS server in the guest: IPPROTO_TLS sockets bound to guest ports the
 * policy maps to host addresses; the backend terminates TLS with the
 * operator's certificate and accept() returns handshaken connections.
 *
 * tls-server PORT PORT6 serves, in order:
 *   1. on PORT (IPv4), blocking accept(): one line echoed back ("echo: ...")
 *      until the client's close_notify (openssl s_client on the host);
 *   2. on PORT, non-blocking accept() driven by epoll: an HTTP request,
 *      answered with a page (curl on the host);
 *   3. on PORT6 (IPv6): one line echoed back.
 * It prints "tls-server: listening" once both sockets listen. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../../include/in_tls.h"
#include "check.h"

static int listen_on(int family, int port)
{
	struct sockaddr_storage addr = { 0 };
	socklen_t len;
	int fd = socket(family, SOCK_STREAM, IPPROTO_TLS);

	check(fd >= 0, family == AF_INET ? "socket(AF_INET, IPPROTO_TLS)" : "socket(AF_INET6, IPPROTO_TLS)");
	if (family == AF_INET) {
		struct sockaddr_in *in = (struct sockaddr_in *)&addr;
		in->sin_family = AF_INET;
		in->sin_port = htons(port);
		in->sin_addr.s_addr = htonl(INADDR_ANY);
		len = sizeof(*in);
	} else {
		struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&addr;
		in6->sin6_family = AF_INET6;
		in6->sin6_port = htons(port);
		in6->sin6_addr = in6addr_any;
		len = sizeof(*in6);
	}
	check(bind(fd, (struct sockaddr *)&addr, len) == 0, "bind() to a port the policy maps");
	check(listen(fd, 8) == 0, "listen()");
	memset(&addr, 0, sizeof(addr));
	len = sizeof(addr);
	check(getsockname(fd, (struct sockaddr *)&addr, &len) == 0 &&
		      ntohs(((struct sockaddr_in *)&addr)->sin_port) == port,
	      "getsockname() gives the bound port");
	return fd;
}

/* Echoes what comes until the peer's close_notify. */
static void echo_until_eof(int fd)
{
	char buf[4096], out[4200];
	ssize_t n;
	int lines = 0;

	while ((n = recv(fd, buf, sizeof(buf) - 1, 0)) > 0) {
		buf[n] = 0;
		int len = snprintf(out, sizeof(out), "echo: %s", buf);
		check(send(fd, out, len, 0) == len, "send the echo");
		lines++;
	}
	check(n == 0 && lines > 0, "the client's data, then its close_notify (recv returns 0)");
}

static void show_peer(int fd, int family)
{
	struct sockaddr_storage peer;
	socklen_t len = sizeof(peer);
	char text[INET6_ADDRSTRLEN] = "?";
	char sni[256] = "";
	socklen_t sni_len = sizeof(sni);

	check(getpeername(fd, (struct sockaddr *)&peer, &len) == 0 && peer.ss_family == family,
	      "getpeername() on the accepted socket");
	if (family == AF_INET)
		inet_ntop(AF_INET, &((struct sockaddr_in *)&peer)->sin_addr, text, sizeof(text));
	else
		inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&peer)->sin6_addr, text, sizeof(text));
	check(strcmp(text, family == AF_INET ? "127.0.0.1" : "::1") == 0, "the client is the host's loopback");
	check(getsockopt(fd, IPPROTO_TLS, TLS_HOSTNAME, sni, &sni_len) == 0, "getsockopt(TLS_HOSTNAME): the client's SNI");
	printf("tls-server: client %s port %d asked for '%s'\n", text,
	       ntohs(((struct sockaddr_in *)&peer)->sin_port), sni);
	fflush(stdout);
}

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: tls-server PORT PORT6\n");
		return 2;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	int port = atoi(argv[1]), port6 = atoi(argv[2]);
	int listener = listen_on(AF_INET, port);
	int listener6 = listen_on(AF_INET6, port6);

	/* A second socket cannot take a bound port; a port the policy does
	 * not map cannot be bound at all. */
	int other = socket(AF_INET, SOCK_STREAM, IPPROTO_TLS);
	struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons(port) };
	check(bind(other, (struct sockaddr *)&addr, sizeof(addr)) == -1 && errno == EADDRINUSE, "bind() of a bound port: EADDRINUSE");
	addr.sin_port = htons(1);
	check(bind(other, (struct sockaddr *)&addr, sizeof(addr)) == -1 && errno == EACCES, "bind() of an unmapped port: EACCES");
	close(other);
	printf("tls-server: listening\n");
	fflush(stdout);

	/* 1. Blocking accept. */
	int fd = accept(listener, NULL, NULL);
	check(fd >= 0, "accept() returns a handshaken connection");
	show_peer(fd, AF_INET);
	int version = 0;
	socklen_t version_len = sizeof(version);
	check(getsockopt(fd, IPPROTO_TLS, TLS_CHOSEN_VERSION, &version, &version_len) == 0 && version == TLS_1_3,
	      "TLS_CHOSEN_VERSION is TLS 1.3");
	echo_until_eof(fd);
	close(fd);

	/* 2. Non-blocking accept with epoll. */
	fcntl(listener, F_SETFL, fcntl(listener, F_GETFL) | O_NONBLOCK);
	fd = accept(listener, NULL, NULL);
	check(fd == -1 && errno == EAGAIN, "non-blocking accept() with nothing waiting: EAGAIN");
	int ep = epoll_create1(0);
	struct epoll_event ev = { .events = EPOLLIN, .data.fd = listener }, got;
	check(epoll_ctl(ep, EPOLL_CTL_ADD, listener, &ev) == 0, "epoll_ctl(ADD, listening socket)");
	printf("tls-server: waiting for the HTTP client\n");
	fflush(stdout);
	fd = -1;
	while (fd < 0) {
		int n = epoll_wait(ep, &got, 1, 120000);
		check(n == 1 && (got.events & EPOLLIN), "epoll_wait: the listening socket is readable");
		if (n != 1)
			break;
		fd = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
		if (fd < 0 && errno != EAGAIN)
			break;
	}
	check(fd >= 0, "accept4() after EPOLLIN");
	show_peer(fd, AF_INET);
	char request[4096];
	size_t have = 0;
	ssize_t n;
	while (have < sizeof(request) - 1 && (n = recv(fd, request + have, sizeof(request) - 1 - have, 0)) > 0) {
		have += n;
		request[have] = 0;
		if (strstr(request, "\r\n\r\n"))
			break;
	}
	check(strncmp(request, "GET /from-the-host HTTP/1.1\r\n", 29) == 0, "an HTTP request came");
	const char *body = "served by a TLS server inside the guest\n";
	char response[512];
	int len = snprintf(response, sizeof(response),
			   "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n%s",
			   strlen(body), body);
	check(send(fd, response, len, 0) == len, "send the HTTP response");
	check(shutdown(fd, SHUT_WR) == 0, "shutdown(SHUT_WR): close_notify after the page");
	close(fd);
	close(ep);

	/* 3. IPv6. */
	fd = accept(listener6, NULL, NULL);
	check(fd >= 0, "accept() on the IPv6 socket");
	show_peer(fd, AF_INET6);
	echo_until_eof(fd);
	close(fd);

	close(listener);
	close(listener6);
	printf("tls-server: %d failure(s)\n", failures);
	return failures != 0;
}
