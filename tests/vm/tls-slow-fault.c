/* Issue 14 item 8: a process whose send or receive buffer faults slowly
 * (here a userfaultfd page whose fault a thread of ours answers only after
 * FAULT_SECONDS, as an mmap of a FUSE or network file would) must stall
 * only its own socket. While one thread is blocked in write() from such
 * a page, and then in read() into one, another socket's round trip must
 * finish in well under the fault's time; afterwards the slow calls
 * complete with the right bytes.
 * usage: tls-slow-fault PORT   (a TLS echo server for localhost)
 * Prints "tls-slow-fault: N failure(s)" at the end. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include "../../include/in_tls.h"
#include "check.h"
#include "tls-client.h"

#define FAULT_SECONDS 3
#define PAGE 4096
/* A round trip on another socket while a fault is pending must take less
 * than this (it takes milliseconds; a stall takes FAULT_SECONDS). */
#define QUICK_LIMIT 1.0

static int port, uffd;
static atomic_int faults_seen;
static char *pages; /* two pages registered with userfaultfd */

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

/* Answers each fault FAULT_SECONDS late with a page of 'x'. */
static void *fault_handler(void *unused)
{
	(void)unused;
	static char source[PAGE] __attribute__((aligned(PAGE)));
	memset(source, 'x', sizeof(source));
	for (;;) {
		struct pollfd p = { .fd = uffd, .events = POLLIN };
		if (poll(&p, 1, -1) < 0)
			return NULL;
		struct uffd_msg msg;
		if (read(uffd, &msg, sizeof(msg)) != sizeof(msg) || msg.event != UFFD_EVENT_PAGEFAULT)
			continue;
		atomic_fetch_add(&faults_seen, 1);
		sleep(FAULT_SECONDS);
		struct uffdio_copy copy = {
			.dst = msg.arg.pagefault.address & ~(unsigned long long)(PAGE - 1),
			.src = (unsigned long)source,
			.len = PAGE,
		};
		if (ioctl(uffd, UFFDIO_COPY, &copy) < 0)
			printf("  UFFDIO_COPY: %s\n", strerror(errno));
	}
}

struct slow_call {
	int fd;
	int sending; /* else receiving */
	ssize_t result;
};

static void *slow_call(void *arg)
{
	struct slow_call *call = arg;
	call->result = call->sending ? write(call->fd, pages, PAGE) : read(call->fd, pages + PAGE, PAGE);
	return NULL;
}

/* Starts `call` in a thread, waits until its buffer faulted, then times
 * a round trip on `quick`. */
static void round_trip_during(struct slow_call *call, int quick, const char *what)
{
	int before = atomic_load(&faults_seen);
	pthread_t thread;
	pthread_create(&thread, NULL, slow_call, call);
	double give_up = now() + 30;
	while (atomic_load(&faults_seen) == before && now() < give_up)
		usleep(10000);
	char text[200];
	snprintf(text, sizeof(text), "%s: its buffer faulted", what);
	check(atomic_load(&faults_seen) > before, text);
	usleep(100000); /* well inside the fault's FAULT_SECONDS */
	double start = now();
	char back[5];
	int ok = write(quick, "ping", 4) == 4 && read_exactly(quick, back, 4) == 0 && memcmp(back, "ping", 4) == 0;
	double took = now() - start;
	snprintf(text, sizeof(text), "%s: meanwhile another socket's round trip (%.3f s, limit %.1f s, fault %d s)",
		 what, took, QUICK_LIMIT, FAULT_SECONDS);
	check(ok && took < QUICK_LIMIT, text);
	pthread_join(thread, NULL);
}

int main(int argc, char **argv)
{
	if (argc != 2)
		return 2;
	port = atoi(argv[1]);
	setvbuf(stdout, NULL, _IOLBF, 0);

	uffd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	check(uffd >= 0, "userfaultfd()");
	struct uffdio_api api = { .api = UFFD_API };
	check(uffd >= 0 && ioctl(uffd, UFFDIO_API, &api) == 0, "UFFDIO_API");
	pages = mmap(NULL, 2 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	struct uffdio_register reg = {
		.range = { .start = (unsigned long)pages, .len = 2 * PAGE },
		.mode = UFFDIO_REGISTER_MODE_MISSING,
	};
	check(pages != MAP_FAILED && ioctl(uffd, UFFDIO_REGISTER, &reg) == 0, "UFFDIO_REGISTER (missing pages)");
	if (failures)
		goto out;
	pthread_t handler;
	pthread_create(&handler, NULL, fault_handler, NULL);

	int slow = connect_tls_loopback(port), quick = connect_tls_loopback(port);
	errno = slow < 0 ? -slow : quick < 0 ? -quick : 0;
	check(slow >= 0 && quick >= 0, "two sockets connect");
	if (failures)
		goto out;

	/* write() from a page that faults slowly. */
	struct slow_call sending = { .fd = slow, .sending = 1 };
	round_trip_during(&sending, quick, "write from a slow page");
	check(sending.result == PAGE, "the slow write sent the whole page");
	static char echoed[PAGE];
	memset(echoed, 0, sizeof(echoed));
	int intact = read_exactly(slow, echoed, PAGE) == 0;
	for (int i = 0; intact && i < PAGE; i++)
		intact = echoed[i] == 'x';
	check(intact, "the slow page's bytes came back intact");

	/* read() into a page that faults slowly: the data is there first. */
	const char *message = "to a slow page";
	check(write(slow, message, strlen(message)) == (ssize_t)strlen(message), "send the data for the slow read");
	struct pollfd p = { .fd = slow, .events = POLLIN };
	check(poll(&p, 1, 10000) == 1, "the echo waits to be read");
	struct slow_call receiving = { .fd = slow, .sending = 0 };
	round_trip_during(&receiving, quick, "read into a slow page");
	check(receiving.result == (ssize_t)strlen(message) && memcmp(pages + PAGE, message, strlen(message)) == 0,
	      "the slow read received the data");
	close(slow);
	close(quick);
out:
	printf("tls-slow-fault: %d failure(s)\n", failures);
	return failures != 0;
}
