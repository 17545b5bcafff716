/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The kernel C API virtio_tls.ko uses, for the module's own bindgen run
 * (Kbuild): the kernel's rust/bindings/bindings_helper.h includes none of
 * the virtio or socket-protocol headers, and the module must build against
 * a distribution's unpatched tree.
 */
#include <linux/delay.h>
#include <linux/hrtimer.h>
#include <linux/jiffies.h>
#include <linux/kthread.h>
#include <linux/mutex.h>
#include <linux/net.h>
#include <linux/poll.h>
#include <linux/scatterlist.h>
#include <linux/sched/signal.h>
#include <linux/socket.h>
#include <linux/timekeeping.h>
#include <linux/uio.h>
#include <linux/virtio.h>
#include <linux/virtio_config.h>
#include <linux/wait.h>
#include <net/inet_common.h>
#include <net/ipv6.h>
#include <net/protocol.h>
#include <net/sock.h>

/*
 * Values bindgen cannot name the same way everywhere: GFP_KERNEL is a macro
 * of casts (the kernel's own helper does this too), and SOCK_CUSTOM_SOCKOPT
 * a member of an anonymous enum.
 */
const gfp_t VIRTIO_TLS_GFP_KERNEL = GFP_KERNEL;
const unsigned int VIRTIO_TLS_SOCK_CUSTOM_SOCKOPT = SOCK_CUSTOM_SOCKOPT;
