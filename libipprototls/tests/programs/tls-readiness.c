/* Readiness is the TLS stream's, not the TCP socket's (libipprototls):
 * - bytes that are no data (TLS 1.3 session tickets) are not POLLIN;
 * - decrypted data the library already holds is POLLIN even when the
 *   kernel has nothing left: reading a page one byte per wakeup never
 *   stalls, with poll, select, pselect, and epoll (level-triggered,
 *   edge-triggered reads to EAGAIN, EPOLLONESHOT with re-arming,
 *   epoll_pwait2);
 * - a thread blocked reading does not stop another from writing.
 * usage: tls-readiness PORT   (openssl s_server -www for localhost) */
#define _GNU_SOURCE /* epoll_pwait2 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <unistd.h>
#include "../../../include/in_tls.h"
#include "../../../tests/vm/check.h"

static struct sockaddr_in server;
static const char request[] = "GET / HTTP/1.0\r\n\r\n";

static int connected(void)
{
	int fd = socket(AF_INET, SOCK_STREAM, IPPROTO_TLS);
	setsockopt(fd, IPPROTO_TLS, TLS_HOSTNAME, "localhost", 10);
	if (connect(fd, (struct sockaddr *)&server, sizeof(server)) < 0)
		return -1;
	return fd;
}

static int requested(void)
{
	int fd = connected();
	if (fd >= 0 && write(fd, request, strlen(request)) != (ssize_t)strlen(request))
		return -1;
	return fd;
}

/* What s_server -www sends is a page describing the session, whose length
 * differs between new and resumed sessions: a reply is whole when it
 * starts with the status line and ends with the page's last tag. */
static char reply[65536];

static int whole(size_t length)
{
	reply[length < sizeof(reply) ? length : sizeof(reply) - 1] = 0;
	return strncmp(reply, "HTTP/1.0 200 ok", 15) == 0 && strstr(reply, "</HTML>") != NULL;
}

enum waiter { POLL, SELECT, PSELECT, EPOLL_LEVEL, EPOLL_ONESHOT, EPOLL_PWAIT2 };

/* Reads the reply one byte per wakeup; 1 when it got all of it, to the
 * end of stream, without a wait timing out. */
static int one_byte_per_wakeup(enum waiter how)
{
	int fd = requested(), ep = -1;
	if (fd < 0)
		return -1;
	if (how == EPOLL_LEVEL || how == EPOLL_ONESHOT || how == EPOLL_PWAIT2) {
		ep = epoll_create1(0);
		struct epoll_event ev = { .events = EPOLLIN | (how == EPOLL_ONESHOT ? EPOLLONESHOT : 0), .data.u64 = 42 };
		epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
	}
	size_t total = 0;
	for (;;) {
		int ready;
		if (how == POLL) {
			struct pollfd p = { .fd = fd, .events = POLLIN };
			ready = poll(&p, 1, 5000) == 1 && (p.revents & POLLIN);
		} else if (how == SELECT) {
			fd_set set;
			FD_ZERO(&set);
			FD_SET(fd, &set);
			struct timeval tv = { .tv_sec = 5 };
			ready = select(fd + 1, &set, NULL, NULL, &tv) == 1 && FD_ISSET(fd, &set);
		} else if (how == PSELECT) {
			fd_set set;
			sigset_t mask;
			FD_ZERO(&set);
			FD_SET(fd, &set);
			sigemptyset(&mask);
			struct timespec ts = { .tv_sec = 5 };
			ready = pselect(fd + 1, &set, NULL, NULL, &ts, &mask) == 1 && FD_ISSET(fd, &set);
		} else if (how == EPOLL_PWAIT2) {
			struct epoll_event got;
			struct timespec ts = { .tv_sec = 5 };
			ready = epoll_pwait2(ep, &got, 1, &ts, NULL) == 1 && (got.events & EPOLLIN) && got.data.u64 == 42;
		} else {
			struct epoll_event got;
			ready = epoll_wait(ep, &got, 1, 5000) == 1 && (got.events & EPOLLIN) && got.data.u64 == 42;
			if (ready && how == EPOLL_ONESHOT) {
				/* Disarmed: nothing more until re-armed, though data
				 * is waiting (checked at the first and middle bytes). */
				struct epoll_event none;
				if ((total == 0 || total == 1000) && epoll_wait(ep, &none, 1, 100) != 0)
					return 0;
				struct epoll_event ev = { .events = EPOLLIN | EPOLLONESHOT, .data.u64 = 42 };
				epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
			}
		}
		if (!ready || total >= sizeof(reply))
			return 0;
		ssize_t n = read(fd, reply + total, 1);
		if (n == 0)
			break;
		if (n < 0)
			return 0;
		total++;
	}
	if (ep >= 0)
		close(ep);
	close(fd);
	return whole(total);
}

/* Edge-triggered, as such programs read: until EAGAIN, in small pieces. */
static int edge_triggered(void)
{
	int fd = requested();
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
	int ep = epoll_create1(0);
	struct epoll_event ev = { .events = EPOLLIN | EPOLLET, .data.fd = fd };
	epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
	size_t total = 0;
	for (;;) {
		struct epoll_event got;
		if (epoll_wait(ep, &got, 1, 5000) != 1)
			return 0;
		for (;;) {
			ssize_t n = total + 7 < sizeof(reply) ? read(fd, reply + total, 7) : -1;
			if (n > 0) {
				total += n;
				continue;
			}
			if (n == 0) {
				close(ep);
				close(fd);
				return whole(total);
			}
			if (errno != EAGAIN)
				return 0;
			break;
		}
	}
}

static void *blocking_reader(void *arg)
{
	int fd = *(int *)arg;
	static char buf[64];
	ssize_t n = read(fd, buf, sizeof(buf));
	return (void *)(long)(n > 0 && strncmp(buf, "HTTP/1.0 200", 12) == 0);
}

int main(int argc, char **argv)
{
	if (argc != 2)
		return 2;
	server = (struct sockaddr_in){ .sin_family = AF_INET, .sin_port = htons(atoi(argv[1])) };
	inet_pton(AF_INET, "127.0.0.1", &server.sin_addr);

	int fd = connected();
	struct pollfd p = { .fd = fd, .events = POLLIN };
	check(poll(&p, 1, 500) == 0, "session tickets after the handshake are not POLLIN");
	close(fd);
	fd = connected();
	fd_set set;
	FD_ZERO(&set);
	FD_SET(fd, &set);
	struct timespec half = { .tv_nsec = 500000000 };
	check(pselect(fd + 1, &set, NULL, NULL, &half, NULL) == 0, "pselect: session tickets are not readable");
	int ep = epoll_create1(0);
	struct epoll_event ev = { .events = EPOLLIN, .data.fd = fd }, got;
	epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
	check(epoll_pwait2(ep, &got, 1, &half, NULL) == 0, "epoll_pwait2: session tickets are not EPOLLIN");
	close(ep);
	close(fd);

	check(one_byte_per_wakeup(POLL), "poll: one byte per wakeup reads the whole page");
	check(one_byte_per_wakeup(SELECT), "select: one byte per wakeup reads the whole page");
	check(one_byte_per_wakeup(PSELECT), "pselect: one byte per wakeup reads the whole page");
	check(one_byte_per_wakeup(EPOLL_LEVEL), "epoll: one byte per wakeup reads the whole page");
	check(one_byte_per_wakeup(EPOLL_ONESHOT), "epoll EPOLLONESHOT: silent until re-armed, then the next byte");
	check(one_byte_per_wakeup(EPOLL_PWAIT2), "epoll_pwait2: one byte per wakeup reads the whole page");
	check(edge_triggered(), "epoll EPOLLET: reads to EAGAIN get the whole page");

	fd = connected();
	pthread_t reader;
	pthread_create(&reader, NULL, blocking_reader, &fd);
	usleep(200000); /* the reader is blocked in read() by now */
	check(write(fd, request, strlen(request)) == (ssize_t)strlen(request), "a write while another thread blocks reading");
	void *result;
	pthread_join(reader, &result);
	check(result == (void *)1L, "the blocked reader gets the reply");
	close(fd);

	printf("tls-readiness: %d failure(s)\n", failures);
	return failures != 0;
}
