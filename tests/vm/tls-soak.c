/* Soak: WORKERS processes open TLS connections through virtio_tls.ko to an
 * echo server on the host, one after another for SECONDS, each sending a
 * pseudo-random amount (1 B .. 64 KiB) of pseudo-random bytes and
 * comparing what comes back byte for byte, then closing with close_notify.
 *
 * usage: tls-soak ADDRESS PORT NAME SECONDS WORKERS
 * prints "tls-soak: connections N bytes B errors E mismatches M" */
#include <arpa/inet.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../../include/in_tls.h"
#include "check.h"

struct tally {
	unsigned long connections, bytes, errors, mismatches;
};

static uint64_t next_random(uint64_t *state)
{
	/* xorshift64*: reproducible per worker, no libc state shared. */
	*state ^= *state >> 12;
	*state ^= *state << 25;
	*state ^= *state >> 27;
	return *state * 2685821657736338717ULL;
}

static int one_connection(struct sockaddr_in *addr, const char *name, uint64_t *rng, struct tally *t)
{
	static unsigned char out[65536], in[65536];
	size_t len = 1 + next_random(rng) % sizeof(out);
	for (size_t i = 0; i < len; i++)
		out[i] = (unsigned char)next_random(rng);
	int fd = socket(AF_INET, SOCK_STREAM, IPPROTO_TLS);
	if (fd < 0)
		return -1;
	if (setsockopt(fd, IPPROTO_TLS, TLS_HOSTNAME, name, strlen(name) + 1) != 0 ||
	    connect(fd, (struct sockaddr *)addr, sizeof(*addr)) != 0) {
		close(fd);
		return -1;
	}
	size_t sent = 0, got = 0;
	while (sent < len) {
		ssize_t n = send(fd, out + sent, len - sent, 0);
		if (n <= 0)
			break;
		sent += n;
		/* Read as we go: the echo comes back while we send. */
		while (got < sent) {
			ssize_t r = recv(fd, in + got, len - got, MSG_DONTWAIT);
			if (r <= 0)
				break;
			got += r;
		}
	}
	while (got < len) {
		ssize_t r = recv(fd, in + got, len - got, 0);
		if (r <= 0)
			break;
		got += r;
	}
	shutdown(fd, SHUT_WR);
	char tail;
	ssize_t end = recv(fd, &tail, 1, 0); /* the server's close_notify: 0 */
	close(fd);
	if (sent != len || got != len || end != 0)
		return -1;
	if (memcmp(in, out, len) != 0)
		t->mismatches++;
	t->connections++;
	t->bytes += 2 * len;
	return 0;
}

int main(int argc, char **argv)
{
	if (argc != 6) {
		fprintf(stderr, "usage: tls-soak ADDRESS PORT NAME SECONDS WORKERS\n");
		return 2;
	}
	struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons(atoi(argv[2])) };
	inet_pton(AF_INET, argv[1], &addr.sin_addr);
	const char *name = argv[3];
	int seconds = atoi(argv[4]), workers = atoi(argv[5]);
	struct tally *tallies = mmap(NULL, sizeof(struct tally) * workers, PROT_READ | PROT_WRITE,
				     MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	check(tallies != MAP_FAILED, "shared tallies");
	memset(tallies, 0, sizeof(struct tally) * workers);
	time_t until = time(NULL) + seconds;
	for (int w = 0; w < workers; w++) {
		if (fork() == 0) {
			uint64_t rng = 0x9e3779b97f4a7c15ULL * (w + 1);
			while (time(NULL) < until)
				if (one_connection(&addr, name, &rng, &tallies[w]) != 0)
					tallies[w].errors++;
			_exit(0);
		}
	}
	/* Progress every 30 s, with the guest's free memory: a hang or a leak
	 * shows here before the launcher's timeout. */
	int running = workers;
	time_t next_report = time(NULL) + 30;
	while (running > 0) {
		if (waitpid(-1, NULL, WNOHANG) > 0) {
			running--;
			continue;
		}
		if (time(NULL) >= next_report) {
			unsigned long done = 0, errors = 0;
			for (int w = 0; w < workers; w++) {
				done += tallies[w].connections;
				errors += tallies[w].errors;
			}
			long free_kib = -1;
			FILE *meminfo = fopen("/proc/meminfo", "r");
			char line[128];
			while (meminfo && fgets(line, sizeof(line), meminfo))
				if (sscanf(line, "MemAvailable: %ld kB", &free_kib) == 1)
					break;
			if (meminfo)
				fclose(meminfo);
			printf("tls-soak: progress connections %lu errors %lu guest MemAvailable %ld KiB\n", done, errors, free_kib);
			fflush(stdout);
			next_report += 30;
		}
		usleep(200000);
	}
	struct tally sum = { 0 };
	for (int w = 0; w < workers; w++) {
		sum.connections += tallies[w].connections;
		sum.bytes += tallies[w].bytes;
		sum.errors += tallies[w].errors;
		sum.mismatches += tallies[w].mismatches;
	}
	printf("tls-soak: connections %lu bytes %lu errors %lu mismatches %lu\n", sum.connections, sum.bytes, sum.errors,
	       sum.mismatches);
	check(sum.connections > 0 && sum.errors == 0 && sum.mismatches == 0, "every connection echoed its bytes intact");
	printf("tls-soak: %d failure(s)\n", failures);
	return failures != 0;
}
