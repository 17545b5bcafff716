/* The backend is killed under open sockets and a new one is started on the
 * same vhost-user socket (tests/vm/guest-backend-restart drives the host
 * side): the old sockets fail (ECONNRESET/EPIPE, blocking calls return),
 * and once the new backend is up a new socket connects and echoes.
 * usage: tls-restart PORT   (a TLS echo server for localhost)
 * Prints "tls-restart: kill the backend" when its sockets are open and it
 * blocks in read(), "tls-restart: start a new backend" once the old
 * sockets have failed, "tls-restart: restart the backend quietly" before
 * 10 s without a request (the host then kills the backend and starts
 * another at once), and "tls-restart: N failure(s)" at the end. */
#include <arpa/inet.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include "../../include/in_tls.h"
#include "tls-client.h"

static int port;

static int failed_as_reset(int error)
{
	return error == ECONNRESET || error == EPIPE;
}

int main(int argc, char **argv)
{
	if (argc != 2)
		return 2;
	port = atoi(argv[1]);
	signal(SIGPIPE, SIG_IGN);
	int failures = 0;

	int reader = connect_tls_loopback(port), writer = connect_tls_loopback(port);
	if (reader < 0 || writer < 0) {
		printf("connect before the kill: %s\n", strerror(-(reader < 0 ? reader : writer)));
		return 1;
	}
	if (echo(reader, "before the kill") != 0 || echo(writer, "before the kill") != 0) {
		printf("echo before the kill failed\n");
		return 1;
	}
	printf("tls-restart: kill the backend\n");
	fflush(stdout);

	char byte;
	errno = 0;
	ssize_t r = read(reader, &byte, 1);
	printf("blocked read: %zd errno %d (%s)\n", r, errno, strerror(errno));
	failures += !(r < 0 && failed_as_reset(errno));
	errno = 0;
	r = write(writer, "after the kill", 14);
	printf("write: %zd errno %d (%s)\n", r, errno, strerror(errno));
	failures += !(r < 0 && failed_as_reset(errno));
	errno = 0;
	int refused = socket(AF_INET, SOCK_STREAM, IPPROTO_TLS);
	printf("socket while no backend: %d errno %d (%s)\n", refused, errno, strerror(errno));
	failures += refused >= 0;
	if (refused >= 0)
		close(refused);
	printf("tls-restart: start a new backend\n");
	fflush(stdout);

	/* New sockets fail at once until the new backend answers. */
	int fresh = -1;
	time_t give_up = time(NULL) + 90;
	int attempts = 0;
	while (time(NULL) < give_up) {
		attempts++;
		fresh = connect_tls_loopback(port);
		if (fresh >= 0)
			break;
		sleep(1);
	}
	printf("new socket after %d attempt(s): %s\n", attempts, fresh >= 0 ? "connected" : strerror(-fresh));
	if (fresh < 0) {
		failures++;
	} else {
		int mismatch = echo(fresh, "hello after the restart");
		printf("echo through the new backend: %s\n", mismatch == 0 ? "ok" : "FAILED");
		failures += mismatch != 0;
		int second = connect_tls_loopback(port);
		mismatch = second < 0 ? -1 : echo(second, "a second socket");
		printf("a second new socket: %s\n", mismatch == 0 ? "ok" : "FAILED");
		failures += mismatch != 0;
		if (second >= 0)
			close(second);
	}

	/* The old sockets stay failed (their ids may name new sockets now). */
	errno = 0;
	r = read(reader, &byte, 1);
	printf("old socket after the restart: %zd errno %d (%s)\n", r, errno, strerror(errno));
	failures += !(r < 0 && failed_as_reset(errno));
	if (fresh < 0) {
		printf("tls-restart: %d failure(s)\n", failures);
		return 1;
	}
	close(reader);
	close(writer);
	/* Closing the old ones must not have closed the new one. */
	int mismatch = echo(fresh, "still here");
	printf("new socket after closing the old ones: %s\n", mismatch == 0 ? "ok" : "FAILED");
	failures += mismatch != 0;

	/* A restart while no request is outstanding: the driver cannot see it
	 * by a timeout, only by the new backend handing out the id `fresh`
	 * still has (spec DRV-12.4). The next socket() must work at once. */
	printf("tls-restart: restart the backend quietly\n");
	fflush(stdout);
	sleep(10);
	int after_quiet = connect_tls_loopback(port);
	printf("first socket after the quiet restart: %s\n", after_quiet >= 0 ? "connected" : strerror(-after_quiet));
	failures += after_quiet < 0;
	if (after_quiet >= 0) {
		mismatch = echo(after_quiet, "hello after the quiet restart");
		printf("echo after the quiet restart: %s\n", mismatch == 0 ? "ok" : "FAILED");
		failures += mismatch != 0;
		close(after_quiet);
	}
	errno = 0;
	r = read(fresh, &byte, 1);
	printf("socket of the previous backend: %zd errno %d (%s)\n", r, errno, strerror(errno));
	failures += !(r < 0 && failed_as_reset(errno));
	close(fresh);
	printf("tls-restart: %d failure(s)\n", failures);
	return failures != 0;
}
