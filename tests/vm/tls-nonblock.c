/* Non-blocking IPPROTO_TLS through virtio_tls.ko, as SSA's tests expect:
 * connect gives EINPROGRESS, POLLOUT once the handshake is done, then
 * EISCONN; epoll and select see the reply; a failed handshake is
 * POLLOUT|POLLERR with SO_ERROR = EPROTO.
 * usage: tls-nonblock PORT   (openssl s_server -www for localhost) */
#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <unistd.h>
#include "../../include/in_tls.h"
#include "check.h"


static int start(struct sockaddr_in *in, const char *hostname)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, IPPROTO_TLS);
	setsockopt(fd, IPPROTO_TLS, TLS_HOSTNAME, hostname, strlen(hostname) + 1);
	errno = 0;
	int r = connect(fd, (struct sockaddr *)in, sizeof(*in));
	check(r < 0 && errno == EINPROGRESS, "non-blocking connect is EINPROGRESS");
	return fd;
}

int main(int argc, char **argv)
{
	if (argc != 2)
		return 2;
	struct sockaddr_in in = { .sin_family = AF_INET, .sin_port = htons(atoi(argv[1])) };
	inet_pton(AF_INET, "127.0.0.1", &in.sin_addr);

	int fd = start(&in, "localhost");
	struct pollfd p = { .fd = fd, .events = POLLOUT };
	check(poll(&p, 1, 20000) == 1 && (p.revents & POLLOUT) && !(p.revents & POLLERR), "POLLOUT once the handshake is done");
	errno = 0;
	check(connect(fd, (struct sockaddr *)&in, sizeof(in)) < 0 && errno == EISCONN, "then connect is EISCONN");
	const char *request = "GET / HTTP/1.0\r\n\r\n";
	check(write(fd, request, strlen(request)) == (ssize_t)strlen(request), "write the request");

	int ep = epoll_create1(0);
	struct epoll_event ev = { .events = EPOLLIN, .data.fd = fd }, got;
	check(epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) == 0, "epoll_ctl ADD");
	size_t total = 0;
	int end = 0;
	char buf[4096];
	while (!end) {
		int n = epoll_wait(ep, &got, 1, 20000);
		if (n != 1) {
			check(0, "epoll_wait reports the socket readable");
			break;
		}
		for (;;) {
			ssize_t r = read(fd, buf, sizeof(buf));
			if (r > 0) {
				total += r;
				continue;
			}
			if (r == 0)
				end = 1;
			else if (errno != EAGAIN)
				end = -1;
			break;
		}
	}
	check(end == 1 && total > 100, "epoll-driven reads get the whole reply and the end of stream");
	printf("reply bytes: %zu\n", total);
	close(ep);
	close(fd);

	fd = start(&in, "localhost");
	fd_set writable;
	FD_ZERO(&writable);
	FD_SET(fd, &writable);
	struct timeval tv = { .tv_sec = 20 };
	check(select(fd + 1, NULL, &writable, NULL, &tv) == 1 && FD_ISSET(fd, &writable), "select sees it writable");
	close(fd);

	fd = start(&in, "wrong.example");
	p = (struct pollfd){ .fd = fd, .events = POLLOUT };
	check(poll(&p, 1, 20000) == 1 && (p.revents & POLLERR), "a failed handshake polls POLLERR");
	int error = 0;
	socklen_t len = sizeof(error);
	check(getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &len) == 0 && error == EPROTO, "SO_ERROR is EPROTO");
	char reason[256] = "";
	len = sizeof(reason);
	getsockopt(fd, IPPROTO_TLS, TLS_ERROR, reason, &len);
	check(strstr(reason, "not valid for") != NULL, "TLS_ERROR says why");
	close(fd);

	printf("tls-nonblock: %d failure(s)\n", failures);
	return failures != 0;
}
