/* SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause */
/*
 * virtio-poke: the VM smoke test's stand-in for a guest driver, in user
 * space. It finds the virtio-tls PCI device, brings it to DRIVER_OK through
 * the virtio-pci modern registers (sysfs resource mmap), which makes QEMU
 * start the vhost-user device (features, memory table, vrings), then reads
 * the device config and sends CREATE and CLOSE on the control queue,
 * polling the used ring. Root only (pagemap gives physical addresses).
 *
 * The in-kernel virtio-pci transport has claimed the device (and shown
 * it on the virtio bus); virtio-poke unbinds it from virtio-pci first and
 * then owns it alone (take_device).
 * Message layouts are those of spec/virtio-tls.md 2.4 and 2.6 (little
 * endian, and so is x86).
 *
 * usage: virtio-poke VENDOR_DEVICE   e.g. virtio-poke 1af4:107f
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096
#define QSIZE 64
#define VIRTIO_PCI_CAP_COMMON 1
#define VIRTIO_PCI_CAP_NOTIFY 2
#define VIRTIO_PCI_CAP_DEVICE 4
#define S_ACK 1
#define S_DRIVER 2
#define S_DRIVER_OK 4
#define S_FEATURES_OK 8

static char devdir[512];
static volatile uint8_t *bars[6];
static volatile uint8_t *common, *notify_base, *devcfg;
static uint32_t notify_mult;

static void die(const char *what)
{
	fprintf(stderr, "virtio-poke: %s: %s\n", what, strerror(errno));
	exit(1);
}

static int read_hex(const char *dir, const char *file)
{
	char path[600], buf[32] = "";
	snprintf(path, sizeof(path), "%s/%s", dir, file);
	FILE *f = fopen(path, "r");
	if (!f)
		return -1;
	if (!fgets(buf, sizeof(buf), f))
		buf[0] = 0;
	fclose(f);
	return (int)strtol(buf, NULL, 16);
}

static volatile uint8_t *map_bar(int bar)
{
	if (bars[bar])
		return bars[bar];
	char path[600];
	snprintf(path, sizeof(path), "%s/resource%d", devdir, bar);
	int fd = open(path, O_RDWR | O_SYNC);
	if (fd < 0)
		die(path);
	off_t size = lseek(fd, 0, SEEK_END);
	void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED)
		die("mmap BAR");
	return bars[bar] = p;
}

static uint64_t phys(void *va)
{
	static int fd = -1;
	if (fd < 0 && (fd = open("/proc/self/pagemap", O_RDONLY)) < 0)
		die("/proc/self/pagemap");
	uint64_t entry;
	if (pread(fd, &entry, 8, ((uintptr_t)va / PAGE) * 8) != 8)
		die("pagemap read");
	if (!(entry >> 63) || !(entry & ((1ULL << 55) - 1))) {
		fprintf(stderr, "virtio-poke: no physical address for %p\n", va);
		exit(1);
	}
	return (entry & ((1ULL << 55) - 1)) * PAGE + (uintptr_t)va % PAGE;
}

#define R8(b, o) (*(volatile uint8_t *)((b) + (o)))
#define R16(b, o) (*(volatile uint16_t *)((b) + (o)))
#define R32(b, o) (*(volatile uint32_t *)((b) + (o)))

static void w64(volatile uint8_t *b, int o, uint64_t v)
{
	R32(b, o) = (uint32_t)v;
	R32(b, o + 4) = (uint32_t)(v >> 32);
}

struct desc { uint64_t addr; uint32_t len; uint16_t flags, next; };
struct queue { struct desc *desc; volatile uint16_t *avail; volatile uint16_t *used; uint16_t avail_idx, used_idx, notify_off; };

static struct queue q[130];

/* Takes the device from the kernel's virtio-pci driver: with
 * CONFIG_IO_STRICT_DEVMEM (Debian's kernels) the BARs a driver has claimed
 * cannot be mapped from user space (mmap fails with EINVAL). Unbinding
 * also turns bus mastering off, without which QEMU does no DMA for the
 * device, so the command register gets memory space and bus master back. */
static void take_device(void)
{
	char path[600], name[256];
	snprintf(path, sizeof(path), "%s/driver/unbind", devdir);
	if (access(path, F_OK) == 0) {
		snprintf(name, sizeof(name), "%s", strrchr(devdir, '/') + 1);
		int fd = open(path, O_WRONLY);
		if (fd < 0 || write(fd, name, strlen(name)) != (ssize_t)strlen(name))
			die("unbind the device from its kernel driver");
		close(fd);
	}
	snprintf(path, sizeof(path), "%s/config", devdir);
	int fd = open(path, O_RDWR);
	uint16_t command;
	if (fd < 0 || pread(fd, &command, 2, 4) != 2)
		die("PCI command register");
	command |= 0x6; /* PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER */
	if (pwrite(fd, &command, 2, 4) != 2)
		die("PCI command register");
	close(fd);
}

static void find_caps(void)
{
	char path[600];
	uint8_t cfg[256];
	snprintf(path, sizeof(path), "%s/config", devdir);
	int fd = open(path, O_RDONLY);
	if (fd < 0 || pread(fd, cfg, sizeof(cfg), 0) != sizeof(cfg))
		die("PCI config space");
	close(fd);
	for (uint8_t at = cfg[0x34]; at; at = cfg[at + 1]) {
		if (cfg[at] != 0x09 || (cfg[at + 3] != VIRTIO_PCI_CAP_COMMON && cfg[at + 3] != VIRTIO_PCI_CAP_NOTIFY &&
					 cfg[at + 3] != VIRTIO_PCI_CAP_DEVICE))
			continue; /* not a vendor cap, or one without a BAR window (PCI_CFG) */
		uint8_t type = cfg[at + 3], bar = cfg[at + 4];
		uint32_t offset;
		memcpy(&offset, &cfg[at + 8], 4);
		volatile uint8_t *base = map_bar(bar) + offset;
		if (type == VIRTIO_PCI_CAP_COMMON && !common)
			common = base;
		else if (type == VIRTIO_PCI_CAP_NOTIFY && !notify_base) {
			notify_base = base;
			memcpy(&notify_mult, &cfg[at + 16], 4);
		} else if (type == VIRTIO_PCI_CAP_DEVICE && !devcfg)
			devcfg = base;
	}
	if (!common || !notify_base || !devcfg) {
		fprintf(stderr, "virtio-poke: virtio-pci capabilities missing\n");
		exit(1);
	}
}

/* One control request: readable `req`, writable response; returns used len. */
static int control(uint8_t *req, int req_len, uint8_t *resp, int resp_len)
{
	struct queue *c = &q[0];
	c->desc[0] = (struct desc){ phys(req), req_len, 1, 1 };
	c->desc[1] = (struct desc){ phys(resp), resp_len, 2, 0 };
	c->avail[2 + c->avail_idx % QSIZE] = 0;
	__sync_synchronize();
	c->avail[1] = ++c->avail_idx;
	__sync_synchronize();
	R16(notify_base, c->notify_off * notify_mult) = 0;
	for (int i = 0; i < 5000; i++) {
		__sync_synchronize();
		if (c->used[1] != c->used_idx) {
			volatile uint32_t *elem = (volatile uint32_t *)&c->used[2 + 4 * (c->used_idx % QSIZE)];
			c->used_idx++;
			return (int)elem[1];
		}
		usleep(1000);
	}
	fprintf(stderr, "virtio-poke: no answer on the control queue\n");
	exit(1);
}

int main(int argc, char **argv)
{
	unsigned vendor, device;
	if (argc != 2 || sscanf(argv[1], "%x:%x", &vendor, &device) != 2) {
		fprintf(stderr, "usage: virtio-poke VENDOR:DEVICE\n");
		return 2;
	}
	DIR *d = opendir("/sys/bus/pci/devices");
	struct dirent *e;
	while (d && (e = readdir(d))) {
		char dir[512];
		snprintf(dir, sizeof(dir), "/sys/bus/pci/devices/%s", e->d_name);
		if (read_hex(dir, "vendor") == (int)vendor && read_hex(dir, "device") == (int)device)
			strcpy(devdir, dir);
	}
	if (!devdir[0]) {
		fprintf(stderr, "virtio-poke: no PCI device %04x:%04x\n", vendor, device);
		return 1;
	}
	take_device();
	find_caps();

	R8(common, 0x14) = S_ACK | S_DRIVER;
	R32(common, 0x00) = 1;
	uint32_t features_hi = R32(common, 0x04);
	R32(common, 0x00) = 0;
	uint32_t features_lo = R32(common, 0x04);
	printf("virtio-poke: device features %#010x%08x\n", features_hi, features_lo);
	R32(common, 0x08) = 1;
	R32(common, 0x0c) = 1; /* VIRTIO_F_VERSION_1, nothing else */
	R32(common, 0x08) = 0;
	R32(common, 0x0c) = 0;
	R8(common, 0x14) = S_ACK | S_DRIVER | S_FEATURES_OK;
	if (!(R8(common, 0x14) & S_FEATURES_OK)) {
		fprintf(stderr, "virtio-poke: FEATURES_OK refused\n");
		return 1;
	}

	int nq = R16(common, 0x12);
	if (nq < 4 || nq > 130) {
		fprintf(stderr, "virtio-poke: %d queues\n", nq);
		return 1;
	}
	uint8_t *mem = mmap(NULL, (nq + 2) * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE | MAP_LOCKED, -1, 0);
	if (mem == MAP_FAILED)
		die("mmap rings");
	memset(mem, 0, (nq + 2) * PAGE);
	for (int i = 0; i < nq; i++) {
		uint8_t *page = mem + i * PAGE;
		q[i].desc = (struct desc *)page;
		q[i].avail = (volatile uint16_t *)(page + 0x400);
		q[i].used = (volatile uint16_t *)(page + 0x800);
		R16(common, 0x16) = i;
		if (R16(common, 0x18) < QSIZE) {
			fprintf(stderr, "virtio-poke: queue %d too small\n", i);
			return 1;
		}
		R16(common, 0x18) = QSIZE;
		q[i].notify_off = R16(common, 0x1e);
		w64(common, 0x20, phys(page));
		w64(common, 0x28, phys(page + 0x400));
		w64(common, 0x30, phys(page + 0x800));
		R16(common, 0x1c) = 1;
	}
	R8(common, 0x14) = S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK;
	printf("virtio-poke: DRIVER_OK with %d queues\n", nq);

	printf("virtio-poke: config max_sockets=%u socket_buf_size=%u queue_pairs=%u tls=%u..%u\n",
	       R32(devcfg, 0), R32(devcfg, 4), R16(devcfg, 8), R8(devcfg, 10), R8(devcfg, 11));

	uint8_t *req = mem + nq * PAGE, *resp = mem + (nq + 1) * PAGE;
	/* CREATE: CtrlHeader{op 1, flags 0, socket 0, request 1} + CreateRequest{AF_INET, pair 0, buf_alloc 65536} */
	memset(req, 0, PAGE);
	req[0] = 1;
	req[8] = 1;
	req[16] = 1;
	*(uint32_t *)(req + 20) = 65536;
	memset(resp, 0xff, 64);
	int used = control(req, 24, resp, 64);
	uint32_t status = *(uint32_t *)resp, socket = *(uint32_t *)(resp + 4);
	printf("virtio-poke: CREATE used=%d status=%u socket=%u\n", used, status, socket);
	/* CLOSE: CtrlHeader{op 2, socket} + CloseRequest{tx_bytes 0} */
	memset(req, 0, PAGE);
	req[0] = 2;
	*(uint32_t *)(req + 4) = socket;
	req[8] = 2;
	used = control(req, 24, resp, 64);
	printf("virtio-poke: CLOSE used=%d status=%u\n", used, *(uint32_t *)resp);
	/* A second CLOSE of the same socket: EBADF (9). */
	used = control(req, 24, resp, 64);
	printf("virtio-poke: CLOSE again used=%d status=%u\n", used, *(uint32_t *)resp);
	return 0;
}
