// tileskip simulation harness: the Verilated Top behind a byte pipe.
//
// Bytes read from stdin go into Top.rx (valid/ready, at most one per cycle); bytes from Top.tx
// go to stdout, flushed whenever a reply frame closes (its second 0x7E) and before the harness
// blocks. The design is clocked only while there is work: input pending, Top.busy (a run, or the
// host interface checking/executing/answering a frame) or a reply byte waiting; otherwise the
// harness blocks in read(). EOF on stdin ends the simulation once the design is idle; the
// cycle count is printed on stderr ("cycles N").
//
// Options:  --trace-fst PATH  (or env TILESKIP_TRACE=PATH) write an FST trace; only in a build
//           made with --trace-fst (VM_TRACE), refused otherwise.
//           --max-idle-cycles N  give up (exit 3) after N cycles busy with no byte in or out
//           (default 0: never).

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <poll.h>
#include <signal.h>
#include <unistd.h>
#include <vector>

#include "Vtop.h"
#include "verilated.h"
#if VM_TRACE
#include "verilated_fst_c.h"
#endif

// Verilator escapes the "__" of Amaranth's port names.
#define RX_VALID rx___05Fvalid
#define RX_READY rx___05Fready
#define RX_PAYLOAD rx___05Fpayload
#define TX_VALID tx___05Fvalid
#define TX_READY tx___05Fready
#define TX_PAYLOAD tx___05Fpayload

static const uint8_t FLAG = 0x7E;

// Drive the reset port if the design has one (sw/sim.py builds Top without: its registers start
// from their initial values, which are their reset values).
template <class T>
static auto set_rst(T* top, int v, int) -> decltype(top->rst = v, void()) { top->rst = v; }
template <class T>
static void set_rst(T*, int, long) {}

static bool write_all(const uint8_t* p, size_t n) {
    while (n) {
        ssize_t k = write(1, p, n);
        if (k < 0) {
            if (errno == EINTR) continue;
            return false;
        }
        p += k;
        n -= (size_t)k;
    }
    return true;
}

int main(int argc, char** argv) {
    const char* trace_path = getenv("TILESKIP_TRACE");
    if (trace_path && !*trace_path) trace_path = nullptr;
    uint64_t max_idle = 0;
    for (int i = 1; i < argc; ++i) {
        if (!strcmp(argv[i], "--trace-fst") && i + 1 < argc) {
            trace_path = argv[++i];
        } else if (!strcmp(argv[i], "--max-idle-cycles") && i + 1 < argc) {
            max_idle = strtoull(argv[++i], nullptr, 10);
        } else if (argv[i][0] == '+') {
            // Verilator plusargs: ignored here
        } else {
            fprintf(stderr, "usage: %s [--trace-fst PATH] [--max-idle-cycles N]\n", argv[0]);
            return 2;
        }
    }
    signal(SIGPIPE, SIG_IGN);

    auto ctx = std::make_unique<VerilatedContext>();
    ctx->commandArgs(argc, argv);
    auto top = std::make_unique<Vtop>(ctx.get(), "top");

#if VM_TRACE
    std::unique_ptr<VerilatedFstC> tfp;
    if (trace_path) {
        ctx->traceEverOn(true);
        tfp = std::make_unique<VerilatedFstC>();
        top->trace(tfp.get(), 99);
        tfp->open(trace_path);
    }
#else
    if (trace_path) {
        fprintf(stderr, "harness: this build has no tracing (build it with trace=True)\n");
        return 2;
    }
#endif
    uint64_t cycles = 0;
    auto dump = [&]() {
#if VM_TRACE
        if (tfp) tfp->dump(ctx->time());
#endif
    };
    // One clock cycle, in two halves: settle with clk low (the caller may then sample the
    // handshakes), then the rising edge. Inputs are set by the caller before settle().
    auto settle = [&]() {
        top->clk = 0;
        top->eval();
    };
    auto edge = [&]() {
        dump();
        ctx->timeInc(1);
        top->clk = 1;
        top->eval();
        dump();
        ctx->timeInc(1);
        ++cycles;
    };
    auto tick = [&]() {
        settle();
        edge();
    };

    set_rst(top.get(), 1, 0);
    top->RX_VALID = 0;
    top->TX_READY = 1;
    for (int i = 0; i < 4; ++i) tick();
    set_rst(top.get(), 0, 0);
    top->clk = 0;
    top->eval();

    std::vector<uint8_t> in(1 << 16);
    size_t in_pos = 0, in_len = 0;
    std::vector<uint8_t> out;
    out.reserve(1 << 16);
    bool out_in_frame = false;   // a FLAG opened a reply frame
    bool eof = false;
    uint64_t idle = 0;
    uint64_t next_poll = 0;
    int rc = 0;

    for (;;) {
        bool work = in_pos < in_len || top->busy || top->TX_VALID;
        if (in_pos == in_len && !eof) {
            // Refill: without waiting if the design has work, else block.
            if (!work && !out.empty()) {
                if (!write_all(out.data(), out.size())) { rc = 1; break; }
                out.clear();
            }
            if (work) {
                // While the design is busy, look for input only every 256 cycles: a system
                // call per cycle would cost more than the cycle.
                if (cycles < next_poll) goto clock;
                next_poll = cycles + 256;
                struct pollfd p = {0, POLLIN, 0};
                if (poll(&p, 1, 0) <= 0) goto clock;
            }
            ssize_t k = read(0, in.data(), in.size());
            if (k < 0 && errno == EINTR) continue;
            if (k <= 0) {
                eof = true;
            } else {
                in_pos = 0;
                in_len = (size_t)k;
            }
            continue;
        }
        if (!work) break;   // EOF and idle
    clock:
        top->RX_VALID = in_pos < in_len;
        top->RX_PAYLOAD = in_pos < in_len ? in[in_pos] : 0;
        settle();
        {
            bool took = top->RX_VALID && top->RX_READY;
            bool gave = top->TX_VALID;   // TX_READY is always 1
            uint8_t b = top->TX_PAYLOAD;
            edge();
            if (took) ++in_pos;
            if (gave) {
                out.push_back(b);
                if (b == FLAG) {
                    if (out_in_frame) {
                        if (!write_all(out.data(), out.size())) { rc = 1; break; }
                        out.clear();
                    }
                    out_in_frame = !out_in_frame;
                }
            }
            if (took || gave) {
                idle = 0;
            } else if (max_idle && ++idle > max_idle) {
                fprintf(stderr, "harness: %llu cycles without a byte in or out, giving up\n",
                        (unsigned long long)max_idle);
                rc = 3;
                break;
            }
        }
    }
    if (!out.empty()) write_all(out.data(), out.size());
    top->final();
#if VM_TRACE
    if (tfp) tfp->close();
#endif
    fprintf(stderr, "cycles %llu\n", (unsigned long long)cycles);
    return rc;
}
