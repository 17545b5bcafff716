/* A page fetched through the device, the backend killed and started again
 * on the same vhost-user socket, and a page fetched through a new socket
 * (tests/vm/libvirt drives the host side, under libvirt).
 * usage: tls-fetch-restart PORT   (openssl s_server -www for localhost)
 * Prints "fetch-restart: page 1: STATUS LINE", then holds a second,
 * idle connection (s_server serves one at a time, so it waits for its
 * request) and prints "fetch-restart: kill the backend". That
 * connection failing is the marker that the backend is gone: it prints
 * "fetch-restart: start a new backend", tries new sockets every second
 * (socket() fails at once while no backend answers) until one connects,
 * fetches again ("fetch-restart: page 2: ...") and ends with
 * "fetch-restart: N failure(s)". */
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

/* GET / over a connected socket: 0 when s_server -www sent its page. */
static int fetch(int fd, int number)
{
	static const char request[] = "GET / HTTP/1.0\r\n\r\n";
	char reply[8192];
	size_t got = 0;
	ssize_t r;
	if (write(fd, request, sizeof(request) - 1) != (ssize_t)sizeof(request) - 1) {
		printf("fetch-restart: page %d: write: %s\n", number, strerror(errno));
		return -1;
	}
	while (got < sizeof(reply) - 1 && (r = read(fd, reply + got, sizeof(reply) - 1 - got)) > 0)
		got += r;
	reply[got] = '\0';
	char *end = strpbrk(reply, "\r\n");
	int status_len = end ? (int)(end - reply) : (int)got;
	printf("fetch-restart: page %d: %.*s (%zu bytes)\n", number, status_len, reply, got);
	/* The page names the server program: it came from s_server itself. */
	return strncmp(reply, "HTTP/1.0 200 ok", 15) == 0 && strstr(reply, "s_server -accept") ? 0 : -1;
}

int main(int argc, char **argv)
{
	if (argc != 2)
		return 2;
	int port = atoi(argv[1]);
	signal(SIGPIPE, SIG_IGN);
	int failures = 0;

	int fd = connect_tls_loopback(port);
	if (fd < 0) {
		printf("fetch-restart: connect: %s\n", strerror(-fd));
		return 1;
	}
	failures += fetch(fd, 1) != 0;
	close(fd);

	int idle = connect_tls_loopback(port);
	if (idle < 0) {
		printf("fetch-restart: idle connect: %s\n", strerror(-idle));
		return 1;
	}
	printf("fetch-restart: kill the backend\n");
	fflush(stdout);
	char byte;
	errno = 0;
	ssize_t r = read(idle, &byte, 1);
	printf("fetch-restart: idle connection: %zd errno %d (%s)\n", r, errno, strerror(errno));
	failures += !(r < 0 && (errno == ECONNRESET || errno == EPIPE));
	close(idle);
	printf("fetch-restart: start a new backend\n");
	fflush(stdout);

	int attempts = 0;
	time_t give_up = time(NULL) + 90;
	fd = -1;
	while (time(NULL) < give_up) {
		attempts++;
		fd = connect_tls_loopback(port);
		if (fd >= 0)
			break;
		sleep(1);
	}
	printf("fetch-restart: new socket after %d attempt(s): %s\n", attempts, fd >= 0 ? "connected" : strerror(-fd));
	if (fd >= 0) {
		failures += fetch(fd, 2) != 0;
		close(fd);
	} else {
		failures++;
	}
	printf("fetch-restart: %d failure(s)\n", failures);
	return failures != 0;
}
