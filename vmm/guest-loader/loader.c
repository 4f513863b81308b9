/*
 * runvm-loader: the guest's /init when the agent is mapped, not read.
 *
 * runvm-vmm places the agent's executable in guest memory that the memory
 * map leaves out of RAM and tells where in RUNVM_PRELOAD=<address>,<size>
 * (a kernel command-line word the kernel hands to init's environment).
 * This program maps the agent's read-only segments straight from that
 * memory through /dev/mem, copies its writable ones into anonymous memory,
 * and jumps to its entry point on its own start-up stack with the
 * auxiliary vector rewritten for the agent. No page of the agent goes
 * through the guest's page cache: on an emulating host every page the
 * kernel reads, allocates and indexes costs ~2,000 emulated instructions,
 * and the whole 2 MB agent was read while it booted. The page tables of a
 * /dev/mem mapping are filled by one loop at mmap.
 *
 * Freestanding (no libc: it would be bigger than the work it does),
 * x86-64 Linux only, static executables only (the agent is one).
 * Anything unexpected ends in a message on the console and exit status
 * 127, which the kernel reports as init dying.
 */

#include <stddef.h>
#include <stdint.h>
#include <elf.h>

#define SYS_write 1
#define SYS_open 2
#define SYS_close 3
#define SYS_mmap 9
#define SYS_munmap 11
#define SYS_exit 60
#define SYS_mknodat 259
#define SYS_unlinkat 263

#define AT_FDCWD (-100)
#define O_RDONLY 0
#define O_CLOEXEC 02000000
#define PROT_READ 1
#define PROT_WRITE 2
#define PROT_EXEC 4
#define MAP_SHARED 1
#define MAP_PRIVATE 2
#define MAP_FIXED 0x10
#define MAP_ANONYMOUS 0x20
#define S_IFCHR 0020000
#define PAGE 4096UL
/* Where build.rs links this program: the agent's segments must lie below. */
#define LOADER_BASE 0x10000000UL

/* Where the agent's node for /dev/mem lives while it is opened: the
 * initramfs has no devtmpfs yet. */
#define MEM_NODE "/dev/.runvm-mem"
#define MEM_DEV ((1 << 8) | 1) /* 1:1, old encoding: fits major and minor < 256 */
#define ENV_NAME "RUNVM_PRELOAD="

static long sys6(long n, long a, long b, long c, long d, long e, long f)
{
	long ret;
	register long r10 __asm__("r10") = d;
	register long r8 __asm__("r8") = e;
	register long r9 __asm__("r9") = f;
	__asm__ volatile("syscall"
			 : "=a"(ret)
			 : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
			 : "rcx", "r11", "memory");
	return ret;
}

static long sys3(long n, long a, long b, long c)
{
	return sys6(n, a, b, c, 0, 0, 0);
}

static size_t length(const char *s)
{
	size_t n = 0;
	while (s[n])
		n++;
	return n;
}

static __attribute__((noreturn)) void fail(const char *what, long err)
{
	static const char prefix[] = "runvm-loader: ";
	char digits[24];
	int i = sizeof digits;
	unsigned long v = err < 0 ? (unsigned long)-err : (unsigned long)err;
	digits[--i] = '\n';
	do {
		digits[--i] = (char)('0' + v % 10);
		v /= 10;
	} while (v && i > 1);
	digits[--i] = ' ';
	sys3(SYS_write, 2, (long)prefix, sizeof prefix - 1);
	sys3(SYS_write, 2, (long)what, (long)length(what));
	sys3(SYS_write, 2, (long)(digits + i), (long)(sizeof digits - i));
	for (;;)
		sys3(SYS_exit, 127, 0, 0);
}

static int is_error(long ret)
{
	return ret < 0 && ret > -4096;
}

/* Hexadecimal with an optional 0x, up to `end` (exclusive) or NUL; 0 on
 * anything else (no region starts at 0). */
static uint64_t parse_hex(const char *s, char stop, const char **rest)
{
	uint64_t v = 0;
	int digits = 0;
	if (s[0] == '0' && s[1] == 'x')
		s += 2;
	for (; *s && *s != stop; s++, digits++) {
		unsigned d;
		if (*s >= '0' && *s <= '9')
			d = (unsigned)(*s - '0');
		else if (*s >= 'a' && *s <= 'f')
			d = (unsigned)(*s - 'a' + 10);
		else
			return 0;
		if (digits == 16)
			return 0;
		v = v << 4 | d;
	}
	*rest = s;
	return digits ? v : 0;
}

static void copy(void *to, const void *from, size_t n)
{
	unsigned char *d = to;
	const unsigned char *s = from;
	while (n--)
		*d++ = *s++;
}

/* Called from _start with the kernel's initial stack: argc, argv, NULL,
 * envp, NULL, auxv. Returns the agent's entry point; _start jumps there
 * with the same stack. */
uint64_t load(uint64_t *sp)
{
	uint64_t argc = sp[0];
	char **env = (char **)(sp + 1 + argc + 1);
	char **preload = NULL;
	for (char **e = env; *e; e++) {
		const char *n = ENV_NAME, *v = *e;
		while (*n && *n == *v)
			n++, v++;
		if (!*n)
			preload = e;
	}
	if (!preload)
		fail(ENV_NAME " is not in the environment", 0);
	const char *rest = "";
	uint64_t base = parse_hex(*preload + sizeof ENV_NAME - 1, ',', &rest);
	uint64_t size = base && *rest == ',' ? parse_hex(rest + 1, 0, &rest) : 0;
	if (!base || !size || base % PAGE || size > (1UL << 32))
		fail(ENV_NAME " is not <page-aligned address>,<size> in hexadecimal", 0);

	long ret = sys6(SYS_mknodat, AT_FDCWD, (long)MEM_NODE, S_IFCHR | 0400, MEM_DEV, 0, 0);
	if (is_error(ret))
		fail("cannot make " MEM_NODE, ret);
	long fd = sys3(SYS_open, (long)MEM_NODE, O_RDONLY | O_CLOEXEC, 0);
	sys3(SYS_unlinkat, AT_FDCWD, (long)MEM_NODE, 0);
	if (is_error(fd))
		fail("cannot open /dev/mem (the guest kernel needs CONFIG_DEVMEM)", fd);
	uint64_t span = (size + PAGE - 1) & ~(PAGE - 1);
	long image = sys6(SYS_mmap, 0, (long)span, PROT_READ, MAP_SHARED, fd, (long)base);
	if (is_error(image))
		fail("cannot map the preloaded image", image);
	const unsigned char *file = (const unsigned char *)image;

	const Elf64_Ehdr *eh = (const Elf64_Ehdr *)file;
	if (size < sizeof *eh || eh->e_ident[EI_MAG0] != ELFMAG0 || eh->e_ident[EI_MAG1] != ELFMAG1 ||
	    eh->e_ident[EI_MAG2] != ELFMAG2 || eh->e_ident[EI_MAG3] != ELFMAG3 ||
	    eh->e_ident[EI_CLASS] != ELFCLASS64 || eh->e_machine != EM_X86_64 ||
	    eh->e_type != ET_EXEC || eh->e_phentsize != sizeof(Elf64_Phdr) ||
	    eh->e_phoff > size || eh->e_phnum > (size - eh->e_phoff) / sizeof(Elf64_Phdr))
		fail("the preloaded image is not a static x86-64 executable", 0);
	const Elf64_Phdr *ph = (const Elf64_Phdr *)(file + eh->e_phoff);
	uint64_t phdr_address = 0;
	uint64_t mapped_end = 0; /* end of the last segment's pages */
	for (unsigned i = 0; i < eh->e_phnum; i++) {
		const Elf64_Phdr *p = &ph[i];
		if (p->p_type == PT_INTERP)
			fail("the preloaded image needs an interpreter", 0);
		if (p->p_type != PT_LOAD || !p->p_memsz)
			continue;
		if (p->p_offset > size || p->p_filesz > size - p->p_offset ||
		    p->p_filesz > p->p_memsz || p->p_vaddr % PAGE != p->p_offset % PAGE ||
		    p->p_vaddr + p->p_memsz < p->p_vaddr || p->p_vaddr < PAGE)
			fail("a segment lies outside the preloaded image", i);
		if (p->p_vaddr + p->p_memsz > LOADER_BASE)
			fail("a segment would cover the loader (link the program below 0x10000000)", i);
		if (eh->e_phoff >= p->p_offset && eh->e_phoff < p->p_offset + p->p_filesz)
			phdr_address = p->p_vaddr + (eh->e_phoff - p->p_offset);
		uint64_t start = p->p_vaddr & ~(PAGE - 1);
		uint64_t end = (p->p_vaddr + p->p_memsz + PAGE - 1) & ~(PAGE - 1);
		/* Each segment gets pages of its own, mapped over whole: one that
		 * shared a page with the one before would wipe part of it. */
		if (start < mapped_end)
			fail("a segment shares a page with the one before (or they are not in order)", i);
		mapped_end = end;
		long prot = ((p->p_flags & PF_R) ? PROT_READ : 0) |
			    ((p->p_flags & PF_W) ? PROT_WRITE : 0) |
			    ((p->p_flags & PF_X) ? PROT_EXEC : 0);
		long at;
		if (!(p->p_flags & PF_W) && p->p_memsz == p->p_filesz) {
			/* Read-only: the image's own pages. */
			at = sys6(SYS_mmap, (long)start, (long)(end - start), prot,
				  MAP_SHARED | MAP_FIXED, fd, (long)(base + (p->p_offset & ~(PAGE - 1))));
		} else {
			/* Writable (data, bss): a private copy. */
			at = sys6(SYS_mmap, (long)start, (long)(end - start), PROT_READ | PROT_WRITE,
				  MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
			/* From the start of the page, as the kernel's loader maps
			 * it: the bytes before the segment are the file's too. */
			if (!is_error(at))
				copy((void *)start, file + (p->p_offset & ~(PAGE - 1)),
				     (p->p_vaddr - start) + p->p_filesz);
			if (!is_error(at) && prot != (PROT_READ | PROT_WRITE))
				at = sys3(10 /* mprotect */, (long)start, (long)(end - start), prot);
		}
		if (is_error(at))
			fail("cannot map a segment of the preloaded image", at);
	}
	if (!phdr_address)
		fail("the preloaded image's program headers are in no segment", 0);
	uint64_t entry = eh->e_entry;
	uint64_t phnum = eh->e_phnum;
	sys3(SYS_munmap, image, (long)span, 0);
	sys3(SYS_close, fd, 0, 0);

	/* The agent's view: its own program headers and entry point, and no
	 * RUNVM_PRELOAD (the tail of the stack block moves down one word). */
	char **last = preload;
	while (last[1])
		last++;
	uint64_t *auxv = (uint64_t *)(last + 2);
	uint64_t *aux_end = auxv;
	while (aux_end[0] != AT_NULL)
		aux_end += 2;
	for (uint64_t *a = auxv; a < aux_end; a += 2) {
		switch (a[0]) {
		case AT_PHDR:
			a[1] = phdr_address;
			break;
		case AT_PHNUM:
			a[1] = phnum;
			break;
		case AT_PHENT:
			a[1] = sizeof(Elf64_Phdr);
			break;
		case AT_ENTRY:
			a[1] = entry;
			break;
		case AT_BASE:
			a[1] = 0;
			break;
		}
	}
	copy(preload, preload + 1, (size_t)((char *)(aux_end + 2) - (char *)(preload + 1)));
	return entry;
}

/* The kernel enters here with the stack above; load() returns the agent's
 * entry point, which starts with the same stack pointer and %rdx = 0 (no
 * function for atexit), as after execve. */
__asm__(".text\n"
	".global _start\n"
	"_start:\n"
	"	mov %rsp, %rdi\n"
	"	mov %rsp, %rbx\n"
	"	and $-16, %rsp\n"
	"	call load\n"
	"	mov %rbx, %rsp\n"
	"	xor %edx, %edx\n"
	"	jmp *%rax\n");
