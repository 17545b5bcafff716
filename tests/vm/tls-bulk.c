/* tls-bulk: send BYTES of a pattern to a TLS echo server through
 * IPPROTO_TLS, read them back, compare; then shutdown(SHUT_WR) and expect
 * the server's end of stream (its close_notify) as read() == 0.
 * usage: tls-bulk ADDRESS PORT HOST BYTES */
#include <arpa/inet.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include "../../include/in_tls.h"

static uint8_t pattern_at(uint64_t i)
{
	uint64_t x = i * 0x9E3779B97F4A7C15ULL;
	return (uint8_t)(x >> 56) ^ (uint8_t)i;
}

int main(int argc, char **argv)
{
	if (argc != 5)
		return 2;
	uint64_t total = strtoull(argv[4], NULL, 10);
	struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons(atoi(argv[2])) };
	inet_pton(AF_INET, argv[1], &addr.sin_addr);
	int fd = socket(AF_INET, SOCK_STREAM, IPPROTO_TLS);
	setsockopt(fd, IPPROTO_TLS, TLS_HOSTNAME, argv[3], strlen(argv[3]) + 1);
	if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
		perror("connect");
		return 1;
	}
	static uint8_t out[65536], in[65536];
	uint64_t sent = 0, received = 0, mismatches = 0;
	while (received < total) {
		/* Send a window ahead, then read back what came. */
		uint64_t window = sent - received;
		if (sent < total && window < 4 * sizeof(out)) {
			size_t n = total - sent < sizeof(out) ? total - sent : sizeof(out);
			for (size_t i = 0; i < n; i++)
				out[i] = pattern_at(sent + i);
			for (size_t done = 0; done < n;) {
				ssize_t w = write(fd, out + done, n - done);
				if (w <= 0) {
					perror("write");
					return 1;
				}
				done += w;
			}
			sent += n;
			continue;
		}
		ssize_t r = read(fd, in, sizeof(in));
		if (r <= 0) {
			fprintf(stderr, "read after %llu bytes: %s\n", (unsigned long long)received, r ? strerror(errno) : "end of stream");
			return 1;
		}
		for (ssize_t i = 0; i < r; i++)
			mismatches += in[i] != pattern_at(received + i);
		received += r;
	}
	if (shutdown(fd, SHUT_WR) < 0) {
		perror("shutdown");
		return 1;
	}
	ssize_t end = read(fd, in, sizeof(in));
	printf("tls-bulk: sent %llu received %llu mismatches %llu end-of-stream %s\n", (unsigned long long)sent,
	       (unsigned long long)received, (unsigned long long)mismatches, end == 0 ? "yes" : "no");
	close(fd);
	return mismatches != 0 || end != 0;
}
