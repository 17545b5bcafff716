/* What holds for an IPPROTO_TLS socket across fork and exec, through
 * libipprototls (see libipprototls/README.md, "fork and exec"):
 * - TLS sockets are close-on-exec, and that cannot be undone: an exec'd
 *   program never sees the bare TCP stream under the TLS one;
 * - after fork, one of the two processes may go on using a socket; the
 *   other's close() or exit does not end the TLS stream (no close_notify).
 * usage: tls-fork PORT   (openssl s_server -www for localhost on 127.0.0.1)
 *        tls-fork --closed FD   (run by exec: is FD closed?) */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include "../../../include/in_tls.h"
#include "../../../tests/vm/check.h"

static int connected(int port)
{
	struct sockaddr_in in = { .sin_family = AF_INET, .sin_port = htons(port) };
	inet_pton(AF_INET, "127.0.0.1", &in.sin_addr);
	int fd = socket(AF_INET, SOCK_STREAM, IPPROTO_TLS);
	setsockopt(fd, IPPROTO_TLS, TLS_HOSTNAME, "localhost", 10);
	if (connect(fd, (struct sockaddr *)&in, sizeof(in)) < 0)
		return -1;
	return fd;
}

/* GET / and the whole reply; 1 if it is openssl's page over TLS 1.3. */
static int fetch(int fd)
{
	const char *request = "GET / HTTP/1.0\r\n\r\n";
	if (write(fd, request, strlen(request)) != (ssize_t)strlen(request))
		return 0;
	static char page[65536];
	size_t got = 0;
	ssize_t n;
	while (got < sizeof(page) - 1 && (n = read(fd, page + got, sizeof(page) - 1 - got)) > 0)
		got += n;
	page[got] = 0;
	return strncmp(page, "HTTP/1.0 200", 12) == 0 && strstr(page, "TLSv1.3") != NULL;
}

int main(int argc, char **argv)
{
	if (argc == 3 && strcmp(argv[1], "--closed") == 0) {
		errno = 0;
		int closed = fcntl(atoi(argv[2]), F_GETFD) < 0 && errno == EBADF;
		return closed ? 0 : 1;
	}
	if (argc != 2)
		return 2;
	int port = atoi(argv[1]);

	int fd = connected(port);
	check(fd >= 0, "connect");
	int flags = fcntl(fd, F_GETFD);
	check(flags >= 0 && (flags & FD_CLOEXEC), "a TLS socket is close-on-exec");
	errno = 0;
	check(fcntl(fd, F_SETFD, 0) < 0 && errno == EPERM, "clearing close-on-exec is EPERM");
	check(dup2(fd, 100) == 100 && (fcntl(100, F_GETFD) & FD_CLOEXEC), "dup2 of a TLS socket is close-on-exec too");
	close(100);

	/* fork + exec while the socket is open (what system() does). */
	fflush(stdout); /* or the child prints what is buffered again */
	pid_t child = fork();
	if (child == 0) {
		char number[16];
		snprintf(number, sizeof(number), "%d", fd);
		execl("/proc/self/exe", argv[0], "--closed", number, (char *)NULL);
		_exit(3);
	}
	int status = -1;
	waitpid(child, &status, 0);
	check(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the exec'd program does not have the TLS socket");
	check(fetch(fd), "the parent goes on using the socket after fork + exec");
	close(fd);

	/* fork; the parent closes its copy first, then the child uses the
	 * socket: the parent's close must not have ended the TLS stream. */
	fd = connected(port);
	check(fd >= 0, "connect again");
	int go[2];
	check(pipe(go) == 0, "pipe");
	fflush(stdout); /* or the child prints what is buffered again */
	child = fork();
	if (child == 0) {
		char byte;
		close(go[1]);
		if (read(go[0], &byte, 1) != 1)
			_exit(4);
		_exit(fetch(fd) ? 0 : 1);
	}
	check(close(fd) == 0, "the parent closes its copy");
	check(write(go[1], "g", 1) == 1, "and lets the child go on");
	status = -1;
	waitpid(child, &status, 0);
	check(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the child fetches a page on the socket the parent closed");

	/* fork; the child exits without closing (at exit the library ends
	 * the streams of the sockets a process left open, but not of those
	 * shared with another process): the parent goes on. */
	fd = connected(port);
	check(fd >= 0, "connect a third time");
	fflush(stdout); /* or the child prints what is buffered again */
	child = fork();
	if (child == 0)
		exit(0);
	status = -1;
	waitpid(child, &status, 0);
	check(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the child exits");
	check(fetch(fd), "the parent fetches a page after its child's exit");
	close(fd);

	printf("tls-fork: %d failure(s)\n", failures);
	return failures != 0;
}
