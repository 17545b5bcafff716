/* The backend dies under an open socket. A poller that waits with no
 * call in the driver must be woken with POLLERR (the driver's watchdog
 * probes a silent device while sockets are open); the read after it must
 * return an error (ECONNRESET), not hang; new sockets fail cleanly.
 * usage: tls-killed PORT   (a TLS echo server for localhost) */
#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include "../../include/in_tls.h"

int main(int argc, char **argv)
{
	if (argc != 2)
		return 2;
	struct sockaddr_in in = { .sin_family = AF_INET, .sin_port = htons(atoi(argv[1])) };
	inet_pton(AF_INET, "127.0.0.1", &in.sin_addr);
	int fd = socket(AF_INET, SOCK_STREAM, IPPROTO_TLS);
	setsockopt(fd, IPPROTO_TLS, TLS_HOSTNAME, "localhost", 10);
	if (connect(fd, (struct sockaddr *)&in, sizeof(in)) < 0) {
		perror("connect");
		return 1;
	}
	printf("connected; polling while the backend is killed\n");
	fflush(stdout);
	struct pollfd wait = { .fd = fd, .events = POLLIN };
	struct timespec start, end;
	clock_gettime(CLOCK_MONOTONIC, &start);
	int ready = poll(&wait, 1, 90 * 1000);
	clock_gettime(CLOCK_MONOTONIC, &end);
	long waited_ms = (end.tv_sec - start.tv_sec) * 1000 + (end.tv_nsec - start.tv_nsec) / 1000000;
	printf("poll: %d revents 0x%x after %ld ms\n", ready, ready > 0 ? wait.revents : 0, waited_ms);
	int failures = !(ready == 1 && (wait.revents & POLLERR));
	char byte;
	errno = 0;
	ssize_t r = read(fd, &byte, 1);
	printf("read: %zd errno %d (%s)\n", r, errno, strerror(errno));
	failures += !(r < 0 && errno == ECONNRESET);
	errno = 0;
	int again = socket(AF_INET, SOCK_STREAM, IPPROTO_TLS);
	printf("new socket: %d errno %d (%s)\n", again, errno, strerror(errno));
	failures += again >= 0;
	close(fd);
	printf("tls-killed: %d failure(s)\n", failures);
	return failures != 0;
}
