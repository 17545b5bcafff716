/* TCP_NODELAY on an IPPROTO_TLS socket in the guest, measured: a request
 * written in two small writes (write-write-read, the pattern Nagle's
 * algorithm and delayed ACKs punish) against a host peer that answers
 * only whole requests, ROUNDS round trips without and with TCP_NODELAY
 * (set before connect, so the device applies it to the host socket).
 * usage: tls-nodelay PORT ROUNDS   (tests/vm/tls-echo-server.py --whole 64)
 * Prints "tls-nodelay: nodelay=N median_us=M p90_us=P mean_us=A" per mode and
 * "tls-nodelay: N failure(s)". */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include "../../include/in_tls.h"
#include "check.h"
#include "tls-client.h"

#define REQUEST 64

static double now_us(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static int compare(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

static void measure(int port, int rounds, int nodelay)
{
	char what[120];
	int fd = socket(AF_INET, SOCK_STREAM, IPPROTO_TLS);
	setsockopt(fd, IPPROTO_TLS, TLS_HOSTNAME, "localhost", 10);
	if (nodelay) {
		int one = 1, got = 0;
		socklen_t len = sizeof(got);
		check(setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) == 0, "setsockopt(TCP_NODELAY, 1)");
		check(getsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &got, &len) == 0 && got == 1 && len == sizeof(int),
		      "getsockopt(TCP_NODELAY) reads 1");
	}
	struct sockaddr_in in = { .sin_family = AF_INET, .sin_port = htons(port) };
	inet_pton(AF_INET, "127.0.0.1", &in.sin_addr);
	snprintf(what, sizeof(what), "connect (nodelay=%d)", nodelay);
	check(connect(fd, (struct sockaddr *)&in, sizeof(in)) == 0, what);
	double *took = calloc(rounds, sizeof(double));
	char request[REQUEST], answer[REQUEST];
	memset(request, 'q', sizeof(request));
	int ok = 1;
	double all = 0;
	for (int i = -5; i < rounds && ok; i++) { /* 5 rounds of warm-up */
		double start = now_us();
		ok = write(fd, request, REQUEST / 2) == REQUEST / 2 &&
		     write(fd, request + REQUEST / 2, REQUEST / 2) == REQUEST / 2 &&
		     read_exactly(fd, answer, REQUEST) == 0;
		if (i >= 0) {
			took[i] = now_us() - start;
			all += took[i];
		}
	}
	snprintf(what, sizeof(what), "%d round trips (nodelay=%d)", rounds, nodelay);
	check(ok, what);
	qsort(took, rounds, sizeof(double), compare);
	/* The guest clock may tick coarsely (refined-jiffies under TCG: 4 ms),
	 * so the mean over all rounds says more than a median of ticks. */
	printf("tls-nodelay: nodelay=%d median_us=%.0f p90_us=%.0f mean_us=%.0f\n", nodelay, took[rounds / 2],
	       took[rounds * 9 / 10], all / rounds);
	free(took);
	close(fd);
}

int main(int argc, char **argv)
{
	if (argc != 3)
		return 2;
	setvbuf(stdout, NULL, _IOLBF, 0);
	int port = atoi(argv[1]), rounds = atoi(argv[2]);
	measure(port, rounds, 0);
	measure(port, rounds, 1);
	printf("tls-nodelay: %d failure(s)\n", failures);
	return failures != 0;
}
