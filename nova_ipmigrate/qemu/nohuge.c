/*
 * LD_PRELOAD shim for QEMU: makes madvise(MADV_HUGEPAGE) a no-op.
 *
 * QEMU madvises all guest RAM MADV_HUGEPAGE.  When guest RAM is a file on
 * a FUSE filesystem (memfs), the kernel's VM_HUGEPAGE fault path then reads
 * PMD-sized chunks of the file ahead even with readahead disabled, so one
 * guest page fault pages in up to 2 MiB.  Dropping the advice keeps FUSE
 * READs at exactly one page.  Every other call goes to the real madvise.
 *
 * Build: gcc -O2 -shared -fPIC -Wall -Wextra -o nohuge.so nohuge.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stddef.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

typedef int (*madvise_fn)(void *, size_t, int);

int madvise(void *addr, size_t length, int advice)
{
	static madvise_fn real;

	if (advice == MADV_HUGEPAGE)
		return 0;
	if (!real)
		real = (madvise_fn)dlsym(RTLD_NEXT, "madvise");
	if (!real)
		/* No next definition (static oddities): go to the kernel. */
		return (int)syscall(SYS_madvise, addr, length, advice);
	return real(addr, length, advice);
}
