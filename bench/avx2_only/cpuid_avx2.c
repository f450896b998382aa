/* Hide AVX-512, VNNI and AMX from CPUID in this process and the ones it starts (loaded with LD_PRELOAD), so that
 * ONNX Runtime's MLAS, numpy and every other library dispatching on CPUID pick their AVX2 kernels, as on an
 * AVX2-only CPU. Linux CPUID faulting (the cpuid_fault flag) turns each CPUID instruction into SIGSEGV; the handler
 * runs the real instruction with faulting briefly off and clears the feature bits. Faulting is per thread and
 * inherited by threads and forks; exec clears it, and LD_PRELOAD sets it again in the new program. */
#define _GNU_SOURCE
#include <asm/prctl.h>
#include <cpuid.h>
#include <signal.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <dlfcn.h>
#include <stdio.h>
#include <unistd.h>

/* The program's own SIGSEGV handler (Python's faulthandler under pytest), run for faults that are not CPUID. */
static struct sigaction program_handler;
static int (*real_sigaction)(int, const struct sigaction *, struct sigaction *);

static int set_cpuid(int enabled) { return syscall(SYS_arch_prctl, ARCH_SET_CPUID, enabled); }

static void on_fault(int sig, siginfo_t *info, void *context) {
    ucontext_t *uc = context;
    greg_t *r = uc->uc_mcontext.gregs;
    const unsigned char *ip = (const unsigned char *)r[REG_RIP];
    if (ip[0] != 0x0f || ip[1] != 0xa2) { /* a real crash */
        if (program_handler.sa_flags & SA_SIGINFO) { program_handler.sa_sigaction(sig, info, context); return; }
        if (program_handler.sa_handler != SIG_DFL && program_handler.sa_handler != SIG_IGN) {
            program_handler.sa_handler(sig); return;
        }
        struct sigaction dfl;
        memset(&dfl, 0, sizeof dfl);
        dfl.sa_handler = SIG_DFL;
        real_sigaction(sig, &dfl, NULL);
        raise(sig); /* the default action, for a fault and for a signal sent with kill alike */
        return;
    }
    unsigned leaf = (unsigned)r[REG_RAX], sub = (unsigned)r[REG_RCX], a, b, c, d;
    set_cpuid(1);
    __cpuid_count(leaf, sub, a, b, c, d);
    set_cpuid(0);
    if (leaf == 7 && sub == 0) {
        b &= ~((1u << 16) | (1u << 17) | (1u << 21) | (1u << 26) | (1u << 27) | (1u << 28) | (1u << 30) | (1u << 31));
        c &= ~((1u << 1) | (1u << 6) | (1u << 11) | (1u << 12) | (1u << 14));
        d &= ~((1u << 2) | (1u << 3) | (1u << 8) | (1u << 22) | (1u << 23) | (1u << 24) | (1u << 25));
    } else if (leaf == 7 && sub == 1) {
        a &= ~((1u << 4) | (1u << 5)); /* AVX-VNNI, AVX512_BF16 */
    }
    r[REG_RAX] = a; r[REG_RBX] = b; r[REG_RCX] = c; r[REG_RDX] = d;
    r[REG_RIP] += 2;
}

__attribute__((constructor)) static void hide_avx512(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    real_sigaction = dlsym(RTLD_NEXT, "sigaction");
    real_sigaction(SIGSEGV, &sa, NULL);
    if (set_cpuid(0) != 0) {
        fprintf(stderr, "avx2_only: this CPU or kernel has no CPUID faulting; AVX-512 cannot be hidden here\n");
        _exit(2);
    }
}

int sigaction(int sig, const struct sigaction *act, struct sigaction *old) {
    if (!real_sigaction) real_sigaction = dlsym(RTLD_NEXT, "sigaction");
    if (sig != SIGSEGV) return real_sigaction(sig, act, old);
    if (old) *old = program_handler;
    if (act) program_handler = *act;
    return 0;
}
