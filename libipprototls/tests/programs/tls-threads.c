/* Threads and IPPROTO_TLS sockets (libipprototls): one socket driven in
 * both directions at once by two threads (a writer that blocks on a full
 * connection while the reader drains it: the library must never hold the
 * socket while waiting), and many threads with sockets of their own.
 * usage: tls-threads ECHO_PORT   (a TLS echo server for localhost) */
#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include "../../../include/in_tls.h"
#include "../../../tests/vm/check.h"

static struct sockaddr_in server;

static uint8_t pattern_at(uint64_t i, uint64_t seed)
{
	uint64_t x = (i + seed) * 0x9E3779B97F4A7C15ULL;
	return (uint8_t)(x >> 56) ^ (uint8_t)i;
}

static int connected(void)
{
	int fd = socket(AF_INET, SOCK_STREAM, IPPROTO_TLS);
	setsockopt(fd, IPPROTO_TLS, TLS_HOSTNAME, "localhost", 10);
	if (connect(fd, (struct sockaddr *)&server, sizeof(server)) < 0)
		return -1;
	return fd;
}

struct stream {
	int fd;
	uint64_t bytes, seed, done, mismatches;
};

static void *writer(void *arg)
{
	struct stream *s = arg;
	static __thread uint8_t out[65536];
	while (s->done < s->bytes) {
		size_t n = s->bytes - s->done < sizeof(out) ? s->bytes - s->done : sizeof(out);
		for (size_t i = 0; i < n; i++)
			out[i] = pattern_at(s->done + i, s->seed);
		ssize_t w = write(s->fd, out, n);
		if (w <= 0)
			return NULL;
		s->done += w;
	}
	shutdown(s->fd, SHUT_WR);
	return NULL;
}

static void *reader(void *arg)
{
	struct stream *s = arg;
	static __thread uint8_t in[65536];
	ssize_t r;
	while ((r = read(s->fd, in, sizeof(in))) > 0) {
		for (ssize_t i = 0; i < r; i++)
			s->mismatches += in[i] != pattern_at(s->done + i, s->seed);
		s->done += r;
	}
	return NULL;
}

/* A whole echo session on its own socket: write all, read all back. */
static void *session(void *arg)
{
	struct stream *s = arg;
	s->fd = connected();
	if (s->fd < 0)
		return NULL;
	struct stream out = *s, in = *s;
	out.done = in.done = 0;
	pthread_t w;
	pthread_create(&w, NULL, writer, &out);
	reader(&in);
	pthread_join(w, NULL);
	s->done = in.done;
	s->mismatches = in.mismatches;
	close(s->fd);
	return NULL;
}

int main(int argc, char **argv)
{
	if (argc != 2)
		return 2;
	server = (struct sockaddr_in){ .sin_family = AF_INET, .sin_port = htons(atoi(argv[1])) };
	inet_pton(AF_INET, "127.0.0.1", &server.sin_addr);

	/* 32 MiB through the echo: far more than the kernel buffers hold, so
	 * the writer blocks until the reader, on another thread, drains. */
	struct stream one = { .bytes = 32 << 20, .seed = 1 };
	session(&one);
	printf("one socket, two threads: %llu of %llu bytes back, %llu mismatches\n", (unsigned long long)one.done,
	       (unsigned long long)one.bytes, (unsigned long long)one.mismatches);
	check(one.done == one.bytes && one.mismatches == 0, "a writer thread and a reader thread on one socket, 32 MiB each way");

	enum { THREADS = 16 };
	struct stream many[THREADS];
	pthread_t threads[THREADS];
	for (int i = 0; i < THREADS; i++) {
		many[i] = (struct stream){ .bytes = 1 << 20, .seed = 100 + i };
		pthread_create(&threads[i], NULL, session, &many[i]);
	}
	int whole = 0;
	for (int i = 0; i < THREADS; i++) {
		pthread_join(threads[i], NULL);
		whole += many[i].done == many[i].bytes && many[i].mismatches == 0;
	}
	printf("%d of %d threads got their 1 MiB back intact\n", whole, THREADS);
	check(whole == THREADS, "16 threads, a socket each, concurrently");

	printf("tls-threads: %d failure(s)\n", failures);
	return failures != 0;
}
