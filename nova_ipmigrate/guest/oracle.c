/*
 * nova-ipmigrate memory oracle: the guest-side correctness check.
 *
 * Runs as the main workload of the test initramfs.  It owns most of guest
 * RAM, writes a per-page generation pattern, verifies every page it reads
 * against the generation it last wrote, and reports on stdout (the serial
 * console).  Any lost write, stale page or foreign write anywhere in the
 * data plane (FUSE memfs, paging, migration) shows up as ORACLE MISMATCH.
 *
 * Parameters come from /proc/cmdline (dotted names are not passed to init
 * by the kernel, so they cannot come from argv/env):
 *   oracle.mib=N      MiB to own (default 64)
 *   oracle.seconds=S  run time after the fill, 0 = forever (default 0)
 *   oracle.report=R   progress line period in seconds (default 5)
 *   oracle.sweep=W    full read-only verification period in s (default 30)
 *   oracle.hot=P      percent of random accesses that go to the hot set
 *   oracle.hotpct=Q   hot set = first Q percent of pages (default 10)
 *   oracle.rate=M     throttle rewrites to M MiB/s (0 = unthrottled)
 *
 * Output lines (one write(2) each, so nothing sits in a stdio buffer):
 *   ORACLE START mib=N pages=n seconds=S
 *   ORACLE FILLED t=T
 *   ORACLE PROGRESS t=T verified=V rate=R mismatches=M sweeps=N
 *   ORACLE SWEEP t=T pages=n mismatches=m
 *   ORACLE MISMATCH page=i gpa=0x.. gen=g word=w got=0x.. want=0x..
 *   ORACLE DONE verified=V mismatches=M sweeps=N
 *
 * For host-side tests, command-line arguments (same key=value syntax)
 * replace /proc/cmdline.
 *
 * Build: gcc -O2 -static -Wall -Wextra -o oracle oracle.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PAGE_SIZE 4096u
#define WORDS_PER_PAGE (PAGE_SIZE / sizeof(uint64_t))
#define MAX_MISMATCH_LINES_PER_PERIOD 20
/* How many loop iterations between clock reads: clock reads can be slow
 * under emulation (e.g. HPET clocksource traps), pages are cheap. */
#define CLOCK_EVERY 16

struct params {
	uint64_t mib;
	uint64_t seconds;
	uint64_t report;
	uint64_t sweep;
	uint64_t hot;
	uint64_t hotpct;
	uint64_t rate;
};

static uint64_t *region;   /* the owned memory, npages * 4 KiB */
static uint32_t *gen;      /* generation last written to each page */
static uint64_t npages;
static int pagemap_fd = -1;

static double t_start;
static uint64_t total_verified;
static uint64_t total_mismatches;
static uint64_t sweeps;
static uint64_t mismatch_lines_this_period;
static uint64_t suppressed_lines;
static double next_report;
static double last_report_t;
static uint64_t last_report_verified;
static struct params prm;

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void say(const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	int n;
	size_t off = 0;

	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof(buf) - 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n > sizeof(buf) - 2)
		n = (int)sizeof(buf) - 2;
	buf[n++] = '\n';
	while (off < (size_t)n) {
		ssize_t w = write(STDOUT_FILENO, buf + off, (size_t)n - off);

		if (w < 0) {
			if (errno == EINTR)
				continue;
			return;
		}
		off += (size_t)w;
	}
}

/* splitmix64 finaliser: a bijection on 64-bit values. */
static inline uint64_t mix64(uint64_t z)
{
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

/* Seed of the (page, generation) stream.  mix64 is bijective and p, g both
 * fit in 32 bits, so distinct (p, g) give distinct seeds. */
static inline uint64_t page_seed(uint64_t p, uint32_t g)
{
	return mix64((p << 32) | g);
}

/* Word w of the stream: splitmix64's sequence seeded with page_seed. */
static inline uint64_t word_value(uint64_t seed, uint64_t w)
{
	return mix64(seed + (w + 1) * 0x9e3779b97f4a7c15ULL);
}

static void write_page(uint64_t p, uint32_t g)
{
	uint64_t *pg = region + p * WORDS_PER_PAGE;
	uint64_t seed = page_seed(p, g);

	for (uint64_t w = 0; w < WORDS_PER_PAGE; w++)
		pg[w] = word_value(seed, w);
	gen[p] = g;
}

/* Guest-physical address of a virtual address, 0 when unknown. */
static uint64_t gpa_of(const void *va)
{
	uint64_t entry, vaddr = (uint64_t)(uintptr_t)va;

	if (pagemap_fd < 0)
		return 0;
	if (pread(pagemap_fd, &entry, sizeof(entry),
		  (off_t)((vaddr / PAGE_SIZE) * sizeof(entry))) != sizeof(entry))
		return 0;
	if (!(entry & (1ULL << 63)))
		return 0;
	entry &= (1ULL << 55) - 1;
	return entry * PAGE_SIZE + (vaddr % PAGE_SIZE);
}

/* Verify page p against gen[p].  Returns 1 on mismatch (after reporting and
 * rewriting the expected pattern, so one fault is counted once). */
static int verify_page(uint64_t p)
{
	const uint64_t *pg = region + p * WORDS_PER_PAGE;
	uint32_t g = gen[p];
	uint64_t seed = page_seed(p, g);
	uint64_t w;

	total_verified++;
	for (w = 0; w < WORDS_PER_PAGE; w++)
		if (pg[w] != word_value(seed, w))
			break;
	if (w == WORDS_PER_PAGE)
		return 0;

	total_mismatches++;
	if (mismatch_lines_this_period < MAX_MISMATCH_LINES_PER_PERIOD) {
		mismatch_lines_this_period++;
		say("ORACLE MISMATCH page=%llu gpa=0x%llx gen=%u word=%llu got=0x%016llx want=0x%016llx",
		    (unsigned long long)p,
		    (unsigned long long)gpa_of(pg + w), g,
		    (unsigned long long)w, (unsigned long long)pg[w],
		    (unsigned long long)word_value(seed, w));
	} else {
		suppressed_lines++;
	}
	write_page(p, g);
	return 1;
}

static void maybe_report(double t, int force)
{
	double dt;

	if (!force && t < next_report)
		return;
	dt = t - last_report_t;
	say("ORACLE PROGRESS t=%.3f verified=%llu rate=%.0f mismatches=%llu sweeps=%llu",
	    t - t_start, (unsigned long long)total_verified,
	    dt > 0 ? (double)(total_verified - last_report_verified) / dt : 0.0,
	    (unsigned long long)total_mismatches, (unsigned long long)sweeps);
	if (suppressed_lines) {
		say("ORACLE NOTE suppressed=%llu mismatch lines",
		    (unsigned long long)suppressed_lines);
		suppressed_lines = 0;
	}
	last_report_t = t;
	last_report_verified = total_verified;
	mismatch_lines_this_period = 0;
	while (next_report <= t)
		next_report += (double)prm.report;
}

/* Read-only verification of every page (rewrites only mismatching ones). */
static void sweep_all(void)
{
	uint64_t bad = 0;

	for (uint64_t p = 0; p < npages; p++) {
		bad += (uint64_t)verify_page(p);
		if ((p & 255) == 255)
			maybe_report(now(), 0);
	}
	sweeps++;
	say("ORACLE SWEEP t=%.3f pages=%llu mismatches=%llu", now() - t_start,
	    (unsigned long long)npages, (unsigned long long)bad);
}

static uint64_t xorshift_state = 0x2545f4914f6cdd1dULL;

static inline uint64_t xorshift64(void)
{
	uint64_t x = xorshift_state;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	xorshift_state = x;
	return x;
}

static uint64_t random_page(uint64_t hot_pages)
{
	/* hot/cold skew: hot accesses go to [0, hot_pages), the rest to the
	 * remaining pages, so oracle.hot is exactly the hot access share. */
	if (prm.hot && hot_pages && hot_pages < npages) {
		if (xorshift64() % 100 < prm.hot)
			return xorshift64() % hot_pages;
		return hot_pages + xorshift64() % (npages - hot_pages);
	}
	return xorshift64() % npages;
}

static void parse_cmdline(int argc, char **argv)
{
	char buf[4096];
	ssize_t n;
	int fd;
	char *tok, *save = NULL;

	prm.mib = 64;
	prm.seconds = 0;
	prm.report = 5;
	prm.sweep = 30;
	prm.hot = 0;
	prm.hotpct = 10;
	prm.rate = 0;

	if (argc > 1) {
		/* Host-side testing: arguments replace /proc/cmdline. */
		size_t off = 0;

		buf[0] = '\0';
		for (int i = 1; i < argc && off < sizeof(buf) - 2; i++)
			off += (size_t)snprintf(buf + off, sizeof(buf) - off,
						"%s ", argv[i]);
	} else {
		fd = open("/proc/cmdline", O_RDONLY);
		if (fd < 0) {
			say("ORACLE NOTE cannot open /proc/cmdline (%s), using defaults",
			    strerror(errno));
			return;
		}
		n = read(fd, buf, sizeof(buf) - 1);
		close(fd);
		if (n <= 0)
			return;
		buf[n] = '\0';
	}
	for (tok = strtok_r(buf, " \t\n", &save); tok;
	     tok = strtok_r(NULL, " \t\n", &save)) {
		static const struct {
			const char *key;
			uint64_t *val;
		} keys[] = {
			{ "oracle.mib=", &prm.mib },
			{ "oracle.seconds=", &prm.seconds },
			{ "oracle.report=", &prm.report },
			{ "oracle.sweep=", &prm.sweep },
			{ "oracle.hot=", &prm.hot },
			{ "oracle.hotpct=", &prm.hotpct },
			{ "oracle.rate=", &prm.rate },
		};
		for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
			size_t kl = strlen(keys[i].key);

			if (strncmp(tok, keys[i].key, kl) == 0)
				*keys[i].val = strtoull(tok + kl, NULL, 10);
		}
	}
	if (prm.mib == 0)
		prm.mib = 1;
	if (prm.report == 0)
		prm.report = 5;
	if (prm.hot > 100)
		prm.hot = 100;
	if (prm.hotpct > 100)
		prm.hotpct = 100;
}

static void *map_locked(size_t len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);

	return p == MAP_FAILED ? NULL : p;
}

int main(int argc, char **argv)
{
	uint64_t cursor = 0, hot_pages, iter = 0, rewritten = 0;
	double t, end_t, next_sweep, throttle_t0;

	t_start = now();
	parse_cmdline(argc, argv);
	npages = prm.mib * (1024 * 1024 / PAGE_SIZE);
	say("ORACLE START mib=%llu pages=%llu seconds=%llu",
	    (unsigned long long)prm.mib, (unsigned long long)npages,
	    (unsigned long long)prm.seconds);

	/* Lock before mapping so MCL_FUTURE pins the region as it is created:
	 * the guest kernel must never swap, compact or migrate it, or a
	 * mismatch could not be told apart from guest-side page movement. */
	if (mlockall(MCL_CURRENT | MCL_FUTURE) != 0)
		say("ORACLE NOTE mlockall failed: %s", strerror(errno));
	region = map_locked(npages * PAGE_SIZE);
	gen = map_locked(npages * sizeof(*gen));
	if (!region || !gen) {
		/* Over RLIMIT_MEMLOCK (only outside the guest, as non-root):
		 * run unlocked rather than not at all. */
		say("ORACLE NOTE locked mapping failed (%s), running unlocked",
		    strerror(errno));
		munlockall();
		if (region)
			munmap(region, npages * PAGE_SIZE);
		if (gen)
			munmap(gen, npages * sizeof(*gen));
		region = map_locked(npages * PAGE_SIZE);
		gen = map_locked(npages * sizeof(*gen));
	}
	if (!region || !gen) {
		say("ORACLE ERROR cannot map %llu MiB: %s",
		    (unsigned long long)prm.mib, strerror(errno));
		say("ORACLE DONE verified=0 mismatches=0 sweeps=0 error=nomem");
		return 2;
	}
	pagemap_fd = open("/proc/self/pagemap", O_RDONLY);

	/* Fill: every page gets generation 0 written explicitly. */
	for (uint64_t p = 0; p < npages; p++)
		write_page(p, 0);
	t = now();
	say("ORACLE FILLED t=%.3f", t - t_start);

	hot_pages = npages * prm.hotpct / 100;
	end_t = prm.seconds ? t + (double)prm.seconds : 0;
	next_sweep = t + (double)prm.sweep;
	next_report = t + (double)prm.report;
	last_report_t = t;
	last_report_verified = total_verified;
	throttle_t0 = t;

	for (;;) {
		uint64_t pages[2] = { cursor, random_page(hot_pages) };

		cursor = (cursor + 1) % npages;
		for (int i = 0; i < 2; i++) {
			verify_page(pages[i]);
			write_page(pages[i], gen[pages[i]] + 1);
		}
		rewritten += 2;

		if (++iter % CLOCK_EVERY)
			continue;
		t = now();
		maybe_report(t, 0);
		if (prm.sweep && t >= next_sweep) {
			sweep_all();
			t = now();
			next_sweep = t + (double)prm.sweep;
		}
		if (end_t && t >= end_t)
			break;
		if (prm.rate) {
			/* Sleep off whatever we are ahead of the byte budget. */
			double ahead = (double)rewritten * PAGE_SIZE /
					       ((double)prm.rate * 1048576.0) -
				       (t - throttle_t0);

			if (ahead > 0.0005) {
				struct timespec ts = {
					.tv_sec = (time_t)ahead,
					.tv_nsec = (long)((ahead - (double)(time_t)ahead) * 1e9),
				};

				nanosleep(&ts, NULL);
			}
		}
	}

	sweep_all();
	maybe_report(now(), 1);
	say("ORACLE DONE verified=%llu mismatches=%llu sweeps=%llu",
	    (unsigned long long)total_verified,
	    (unsigned long long)total_mismatches, (unsigned long long)sweeps);
	return total_mismatches ? 1 : 0;
}
