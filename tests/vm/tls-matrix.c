/* The failure matrix and concurrency through virtio_tls.ko, in the guest:
 * every verification or negotiation failure is EPROTO with a TLS_ERROR
 * that says why; a peer that drops TCP mid-stream is ECONNRESET after the
 * data it sent; 64 non-blocking sockets driven by one epoll loop.
 * usage: tls-matrix ECHO EXPIRED SELF_SIGNED UNTRUSTED TLS12 DROP  (ports) */
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>
#include "../../include/in_tls.h"
#include "check.h"


static struct sockaddr_in loopback(int port)
{
	struct sockaddr_in in = { .sin_family = AF_INET, .sin_port = htons(port) };
	inet_pton(AF_INET, "127.0.0.1", &in.sin_addr);
	return in;
}

static int tls_socket(int flags)
{
	int fd = socket(AF_INET, SOCK_STREAM | flags, IPPROTO_TLS);
	setsockopt(fd, IPPROTO_TLS, TLS_HOSTNAME, "localhost", 10);
	return fd;
}

static void expect_eproto(const char *what, int port, int min_version, const char *reason)
{
	int fd = tls_socket(0);
	if (min_version)
		setsockopt(fd, IPPROTO_TLS, TLS_VERSION_MIN, &min_version, sizeof(min_version));
	struct sockaddr_in in = loopback(port);
	errno = 0;
	int r = connect(fd, (struct sockaddr *)&in, sizeof(in));
	char text[300];
	snprintf(text, sizeof(text), "%s: connect fails with EPROTO", what);
	check(r < 0 && errno == EPROTO, text);
	char error[256] = "";
	socklen_t len = sizeof(error);
	getsockopt(fd, IPPROTO_TLS, TLS_ERROR, error, &len);
	printf("  TLS_ERROR: %s\n", error);
	snprintf(text, sizeof(text), "%s: TLS_ERROR mentions \"%s\"", what, reason);
	check(strstr(error, reason) != NULL, text);
	close(fd);
}

int main(int argc, char **argv)
{
	if (argc != 7)
		return 2;
	int echo = atoi(argv[1]);
	expect_eproto("expired certificate", atoi(argv[2]), 0, "expired");
	expect_eproto("self-signed certificate", atoi(argv[3]), 0, "not issued by a trusted authority");
	expect_eproto("untrusted root", atoi(argv[4]), 0, "not issued by a trusted authority");
	expect_eproto("TLS 1.2-only peer, socket minimum TLS 1.3", atoi(argv[5]), TLS_1_3, "no TLS version");

	/* A peer that sends 1000 bytes and drops TCP without close_notify. */
	int fd = tls_socket(0);
	struct sockaddr_in in = loopback(atoi(argv[6]));
	check(connect(fd, (struct sockaddr *)&in, sizeof(in)) == 0, "connect to the dropping peer");
	char buf[4096];
	size_t got = 0;
	ssize_t r;
	while ((r = read(fd, buf, sizeof(buf))) > 0)
		got += r;
	check(got == 1000, "the data sent before the drop arrives");
	check(r < 0 && errno == ECONNRESET, "then the read fails with ECONNRESET (truncation, not EOF)");
	close(fd);

	/* 64 concurrent non-blocking sockets, one epoll loop. */
	enum { N = 64, SIZE = 1024 };
	int fds[N], sent[N] = { 0 }, received[N] = { 0 }, done = 0, ep = epoll_create1(0);
	in = loopback(echo);
	for (int i = 0; i < N; i++) {
		fds[i] = tls_socket(SOCK_NONBLOCK);
		errno = 0;
		if (connect(fds[i], (struct sockaddr *)&in, sizeof(in)) < 0 && errno != EINPROGRESS)
			check(0, "non-blocking connect");
		struct epoll_event ev = { .events = EPOLLIN | EPOLLOUT, .data.u32 = i };
		epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &ev);
	}
	char payload[SIZE];
	int bad = 0, rounds = 0;
	while (done < N && rounds++ < 20000) {
		struct epoll_event events[N];
		int n = epoll_wait(ep, events, N, 20000);
		if (n <= 0)
			break;
		for (int e = 0; e < n; e++) {
			int i = events[e].data.u32;
			if ((events[e].events & EPOLLOUT) && sent[i] < SIZE) {
				memset(payload, 'a' + i % 26, sizeof(payload));
				ssize_t w = write(fds[i], payload + sent[i], SIZE - sent[i]);
				if (w > 0)
					sent[i] += w;
				if (sent[i] == SIZE) {
					struct epoll_event ev = { .events = EPOLLIN, .data.u32 = i };
					epoll_ctl(ep, EPOLL_CTL_MOD, fds[i], &ev);
				}
			}
			if (events[e].events & EPOLLIN) {
				while ((r = read(fds[i], buf, sizeof(buf))) > 0) {
					for (ssize_t k = 0; k < r; k++)
						bad += buf[k] != 'a' + i % 26;
					received[i] += r;
				}
				if (received[i] == SIZE) {
					epoll_ctl(ep, EPOLL_CTL_DEL, fds[i], NULL);
					done++;
				}
			}
		}
	}
	printf("64 sockets: %d done\n", done);
	check(done == N && bad == 0, "64 concurrent sockets each echo 1 KiB intact");
	for (int i = 0; i < N; i++)
		close(fds[i]);

	printf("tls-matrix: %d failure(s)\n", failures);
	return failures != 0;
}
