/* The guest test programs' one assertion: prints ok/FAILED with errno,
 * counts failures; each program ends with "NAME: N failure(s)". */
#ifndef VHOST_TLS_VM_CHECK_H
#define VHOST_TLS_VM_CHECK_H

#include <errno.h>
#include <stdio.h>
#include <string.h>

static int failures;

static void check(int ok, const char *what)
{
	printf("%s: %s\n", ok ? "ok" : "FAILED", what);
	if (!ok)
		printf("  errno %d (%s)\n", errno, strerror(errno));
	failures += !ok;
}

#endif
