/* What the guest programs that talk to the host's echo peer share: a
 * verified connection to 127.0.0.1:PORT by name "localhost", reading an
 * exact length, and one echo round trip. */
#ifndef VHOST_TLS_VM_TLS_CLIENT_H
#define VHOST_TLS_VM_TLS_CLIENT_H

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include "../../include/in_tls.h"

/* A connected IPPROTO_TLS socket, or -errno. */
static inline int connect_tls_loopback(int port)
{
	struct sockaddr_in in = { .sin_family = AF_INET, .sin_port = htons(port) };
	inet_pton(AF_INET, "127.0.0.1", &in.sin_addr);
	int fd = socket(AF_INET, SOCK_STREAM, IPPROTO_TLS);
	if (fd < 0)
		return -errno;
	if (setsockopt(fd, IPPROTO_TLS, TLS_HOSTNAME, "localhost", 10) < 0 ||
	    connect(fd, (struct sockaddr *)&in, sizeof(in)) < 0) {
		int error = errno;
		close(fd);
		return -error;
	}
	return fd;
}

/* 0 once `len` bytes are read; -1 on end of stream or error. */
static inline int read_exactly(int fd, char *buffer, size_t len)
{
	size_t got = 0;
	while (got < len) {
		ssize_t r = read(fd, buffer + got, len - got);
		if (r <= 0)
			return -1;
		got += r;
	}
	return 0;
}

/* Sends `message` (at most 128 bytes) and reads its length back: 0 when
 * the echo matches; 1, printing what came back, when other bytes did; -1
 * on error. */
static inline int echo(int fd, const char *message)
{
	size_t len = strlen(message);
	char back[128];
	if (len > sizeof(back) || write(fd, message, len) != (ssize_t)len || read_exactly(fd, back, len) != 0)
		return -1;
	if (memcmp(back, message, len) != 0) {
		printf("  echo of \"%s\" came back as \"%.*s\"\n", message, (int)len, back);
		return 1;
	}
	return 0;
}

#endif
