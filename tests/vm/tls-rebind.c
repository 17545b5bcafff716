/* An open IPPROTO_TLS socket across an unbind and bind of the driver
 * through sysfs, with a new device behind it (the backend was restarted,
 * as after a hot-replug: its socket ids start again at 1). The old socket
 * must fail cleanly (ECONNRESET/EPIPE, spec DRV-12.3) and never alias the
 * new device's socket of the same id, which another process opens: the
 * old socket's write must not reach the new socket's stream, its read
 * must not take the new socket's data, and its close must not close it.
 * The guest has a second virtio-tls device, which the driver must refuse
 * (EBUSY) rather than serve in place of the first.
 * tests/vm/guest-rebind drives the host side.
 * usage: tls-rebind PORT   (a TLS echo server for localhost; two devices,
 * virtio0 and virtio1)
 * Prints "tls-rebind: restart the backend quietly" when its socket is
 * open (the host then kills the backend and starts another at once), and
 * "tls-rebind: N failure(s)" at the end. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include "../../include/in_tls.h"
#include "check.h"
#include "tls-client.h"

static int port;

static int sysfs_write(const char *path, const char *value)
{
	int fd = open(path, O_WRONLY);
	if (fd < 0)
		return -1;
	ssize_t r = write(fd, value, strlen(value));
	close(fd);
	return r == (ssize_t)strlen(value) ? 0 : -1;
}

#define DRIVER "/sys/bus/virtio/drivers/virtio_tls/"

static int bound(const char *device)
{
	char path[128];
	snprintf(path, sizeof(path), DRIVER "%s", device);
	return access(path, F_OK) == 0;
}

static int failed_as_reset(int error)
{
	return error == ECONNRESET || error == EPIPE;
}

/* One byte through a pipe, to step parent and child in turn. */
static void tell(int fd, char what)
{
	if (write(fd, &what, 1) != 1)
		exit(3);
}

static char hear(int fd)
{
	char what = 0;
	return read(fd, &what, 1) == 1 ? what : 0;
}

/* The other process: a socket of the new device, whose echo must carry
 * its own bytes only. Exits with its failure count. */
static int new_process(int from_parent, int to_parent)
{
	failures = 0; /* the parent's are its own */
	int fresh = connect_tls_loopback(port);
	errno = fresh < 0 ? -fresh : 0;
	check(fresh >= 0, "child: a new socket connects through the rebound device");
	tell(to_parent, 'r');
	if (fresh < 0)
		return failures;
	hear(from_parent); /* the parent tried to write and read the old socket */
	check(echo(fresh, "new socket data") == 0, "child: the new socket's echo is its own data only");
	char extra[64];
	errno = 0;
	ssize_t r = recv(fresh, extra, sizeof(extra), MSG_DONTWAIT);
	check(r < 0 && errno == EAGAIN, "child: nothing else arrives on the new socket");
	tell(to_parent, 'e');
	hear(from_parent); /* the parent closed the old socket */
	check(echo(fresh, "after the old close") == 0, "child: the old socket's close left the new one open");
	close(fresh);
	return failures;
}

int main(int argc, char **argv)
{
	if (argc != 2)
		return 2;
	port = atoi(argv[1]);
	signal(SIGPIPE, SIG_IGN);
	setvbuf(stdout, NULL, _IOLBF, 0);

	/* One device serves; the other was refused at boot and stays so. */
	int first = bound("virtio0"), second = bound("virtio1");
	printf("  bound at boot: virtio0 %s, virtio1 %s\n", first ? "yes" : "no", second ? "yes" : "no");
	check(first + second == 1, "the driver bound exactly one of two virtio-tls devices");
	const char *device = second ? "virtio1" : "virtio0", *other = second ? "virtio0" : "virtio1";
	errno = 0;
	check(sysfs_write(DRIVER "bind", other) < 0 && errno == EBUSY, "binding the second device fails (EBUSY)");
	check(!bound(other), "the second device stays unbound");

	int old = connect_tls_loopback(port);
	errno = old < 0 ? -old : 0;
	check(old >= 0, "a socket connects before the rebind");
	if (old < 0)
		goto out;
	check(echo(old, "before the rebind") == 0, "echo before the rebind");

	printf("tls-rebind: restart the backend quietly\n");
	sleep(8);
	check(sysfs_write(DRIVER "unbind", device) == 0, "unbind the driver through sysfs");
	errno = 0;
	ssize_t r = write(old, "while unbound", 13);
	printf("  write while unbound: %zd, errno %d (%s)\n", r, errno, strerror(errno));
	check(r < 0 && failed_as_reset(errno), "the old socket's write fails while unbound (ECONNRESET/EPIPE)");
	check(sysfs_write(DRIVER "bind", device) == 0, "bind the driver again through sysfs");

	int to_child[2], to_parent[2];
	if (pipe(to_child) < 0 || pipe(to_parent) < 0)
		return 3;
	pid_t child = fork();
	if (child == 0)
		_exit(new_process(to_child[0], to_parent[1]));
	hear(to_parent[0]); /* the child's socket is open */

	errno = 0;
	r = write(old, "old socket data", 15);
	printf("  old socket write: %zd, errno %d (%s)\n", r, errno, strerror(errno));
	check(r < 0 && failed_as_reset(errno), "the old socket's write fails (ECONNRESET/EPIPE)");
	char buffer[64];
	errno = 0;
	r = recv(old, buffer, sizeof(buffer), MSG_DONTWAIT);
	printf("  old socket read: %zd, errno %d (%s)\n", r, errno, strerror(errno));
	check(r < 0 && errno == ECONNRESET, "the old socket's read fails (ECONNRESET)");
	tell(to_child[1], 'g');
	hear(to_parent[0]); /* the child's echo came back */
	errno = 0;
	r = recv(old, buffer, sizeof(buffer), MSG_DONTWAIT);
	printf("  old socket read after the new socket's echo: %zd, errno %d (%s)\n", r, errno, strerror(errno));
	check(r < 0 && errno == ECONNRESET, "the old socket reads none of the new socket's data");
	check(close(old) == 0, "close the old socket");
	tell(to_child[1], 'g');
	int status = 0;
	waitpid(child, &status, 0);
	check(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the other process's socket saw only its own data");

	int after = connect_tls_loopback(port);
	errno = after < 0 ? -after : 0;
	check(after >= 0 && echo(after, "one more") == 0, "a socket after all that connects and echoes");
	if (after >= 0)
		close(after);
out:
	printf("tls-rebind: %d failure(s)\n", failures);
	return failures != 0;
}
