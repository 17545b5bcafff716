/* Guest-side check of IPPROTO_TLS socket creation through virtio_tls.ko:
 * what SSA's tests assert about socket(), written as an application would. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <unistd.h>
#include "../../include/in_tls.h"
#include "check.h"


int main(void)
{
	int fds[3];
	for (int i = 0; i < 3; i++) {
		int family = i == 2 ? AF_INET6 : AF_INET;
		fds[i] = socket(family, SOCK_STREAM, IPPROTO_TLS);
		check(fds[i] >= 0, family == AF_INET6 ? "socket(AF_INET6, SOCK_STREAM, IPPROTO_TLS)" : "socket(AF_INET, SOCK_STREAM, IPPROTO_TLS)");
		if (fds[i] < 0)
			printf("  errno %d (%s)\n", errno, strerror(errno));
	}
	errno = 0;
	check(socket(AF_INET, SOCK_DGRAM, IPPROTO_TLS) < 0 && errno == EPROTONOSUPPORT,
	      "socket(AF_INET, SOCK_DGRAM, IPPROTO_TLS) fails with EPROTONOSUPPORT");
	errno = 0;
	check(socket(AF_INET6, SOCK_DGRAM, IPPROTO_TLS) < 0 && errno == EPROTONOSUPPORT,
	      "socket(AF_INET6, SOCK_DGRAM, IPPROTO_TLS) fails with EPROTONOSUPPORT");
	for (int i = 0; i < 3; i++)
		check(fds[i] < 0 || close(fds[i]) == 0, "close");
	printf("tls-socket: %d failure(s)\n", failures);
	return failures != 0;
}
