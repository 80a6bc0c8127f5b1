"""The accelerator core: memories, the layer sequencer, counters and the host bus.

One run command executes every layer of the program held in the descriptor memory: the
sequencer loads a layer's descriptor, starts the loader, waits until the last block has been
written, stores the layer's counters and moves on, the two activation buffers swapping roles.
The host reaches every memory through a command/response bus (``cmd``/``rsp``) while the core is
idle; see ``sw/layout.py`` (``Region``, ``region_map``, ``CHUNKED``) for the map.
"""

from amaranth.hdl import Cat, Const, Elaboratable, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from sw import layout
from sw.layout import COUNTER_BITS, COUNTERS, HW_VERSION, Region

from .arith import lut_mul
from .compact_loader import CompactLoader
from .compact_output import CompactOutput
from .fanout import KEEP, copies
from .loader import Loader
from .output import OutputStage
from .pe_array import PEArray
from .spram import SinglePortMemory
from .tags import descriptor_layout

__all__ = ["Core", "bus_layouts", "YOSYS_NO_COLLISIONS"]

#: Host words per parameter memory, at most: a parameter row wider than this is split into
#: memories of its own, each with an address register next to its block RAMs.
PARAM_LANES = 9

#: Yosys command for a design holding the core, run after reading it: the read data of a
#: core memory's read port is never used in a cycle in which the memory's write port writes
#: the word read. The host's accesses and the compute pipeline's never overlap (``busy``
#: switches every port); a layer reads one ping-pong buffer while the output stage writes the
#: other (the two halves of each bank's memory); the host's read ports are enabled in its
#: write cycles too, but then nothing takes their data.
#: So a collision may read anything, and Yosys need not emulate the read-first behaviour of
#: Amaranth's read ports with a comparator and a multiplexer after each block RAM. It applies
#: to synchronous read ports of memories with one write port and no transparency (all of the
#: core's; the loader's FIFO, read asynchronously, has no collisions to speak of, and Yosys
#: refuses the parameter on such a port).
YOSYS_NO_COLLISIONS = (r"setparam -set COLLISION_X_MASK 1'1 t:$memrd_v2 r:CLK_ENABLE=1 %i "
                       r"r:COLLISION_X_MASK=1'0 %i r:TRANSPARENCY_MASK=1'0 %i")


def bus_layouts(config):
    """(command layout, response layout) of the host bus."""
    regions = layout.region_map(config)
    index_bits = max(d for _, d in regions.values()).bit_length()
    data_bits = max(w for w, _ in regions.values())
    cmd = data.StructLayout({"write": 1, "region": 4, "index": index_bits,
                             "data": data_bits})
    rsp = data.StructLayout({"data": data_bits, "error": 1})
    return cmd, rsp


def weight_memories(config):
    """Memories the weights are kept in: one per bank (the pipelined loader reads all ``C``
    banks of an fc slot at once), or one single-ported memory for the compact loader, which
    reads one word a cycle (hw/spram.py: on an iCE40 UltraPlus, its SPRAMs)."""
    return 1 if config.loader == "compact" else config.cols


def shared_regions(config):
    """{Region: host index of its first word among the weight memory's host words} of the
    regions kept in the weight memory besides the weights. With one single-ported weight
    memory (on an iCE40 UltraPlus, its SPRAMs, which have room to spare) the layer descriptors
    and the counters lie in its rows past the weights': the sequencer reads and writes them
    only while the loader is idle, and the host only while no run is in progress. Otherwise
    they have memories of their own ({})."""
    if config.loader != "compact":
        return {}
    rows = layout.memory_map(config)
    kw = layout.chunk_shift(rows[Region.WEIGHT][0])
    kd = layout.chunk_shift(rows[Region.DESC][0])
    assert kd >= kw, "a descriptor row spans whole weight rows"
    desc = config.weight_words << kw
    return {Region.DESC: desc, Region.COUNT: desc + (config.max_layers << kd)}


def weight_rows(config):
    """Rows of a compact configuration's one weight memory: the weights', then those of
    :func:`shared_regions`."""
    shared = shared_regions(config)
    kw = layout.chunk_shift(layout.memory_map(config)[Region.WEIGHT][0])
    counters = config.max_layers * len(COUNTERS)
    return (shared[Region.COUNT] + counters + (1 << kw) - 1) >> kw


def flag_ports(config):
    """Read ports of each flag bank the loader uses: one per kernel row (hw/loader.py), or one
    (hw/compact_loader.py reads one kernel row at a time)."""
    return 1 if config.loader == "compact" else config.max_kernel


def _count_up(value):
    """``value + 1``, or ``value`` where it would wrap: 32-bit cycle counters wrap (the host's
    word could not show more), narrower ones stop at their largest value."""
    if len(value) >= COUNTER_BITS:
        return value + 1
    return value + ~value.all()


class _Counter(Elaboratable):
    """A ``width``-bit accumulator cleared by ``clear`` and advanced by ``inc``."""

    def __init__(self, width):
        self.clear = Signal()
        self.inc = Signal(width)
        self.value = Signal(width)

    def elaborate(self, platform):
        m = Module()
        with m.If(self.clear):
            m.d.sync += self.value.eq(0)
        with m.Else():
            m.d.sync += self.value.eq(self.value + self.inc)
        return m


class Core(wiring.Component):
    """The whole accelerator behind a host bus.

    Parameters
    ----------
    config : sw.config.Config
        Array shape, tile, buffer depths: everything is derived from it.

    Members
    -------
    cmd : In(stream.Signature(cmd layout))
        Host bus commands: write or read one word of a region. One command per cycle is
        taken (``cmd.ready``, a register, is low only while 8 taken commands have not had
        their response taken; with ``Config.bus = "compact"``, while one has not).
    rsp : Out(stream.Signature(rsp layout))
        One response per command, in order, at most 7 cycles after the command was taken
        (later if ``rsp`` stalls): the word read (0 for a write) and an error bit, set for an
        unknown region, an index out of range, a write to a read-only word, or a memory
        access while a run is in progress; an erroneous command changes nothing.
        ``rsp.payload`` is a register.
    busy : Out(1)
        A run is in progress.
    """

    def __init__(self, config):
        self.config = config
        cmd, rsp = bus_layouts(config)
        super().__init__({
            "cmd": In(stream.Signature(cmd)),
            "rsp": Out(stream.Signature(rsp)),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        cfg = self.config
        C, NB = cfg.cols, cfg.act_banks
        K = flag_ports(cfg)
        regions = layout.region_map(cfg)
        m = Module()

        loader_cls = CompactLoader if cfg.loader == "compact" else Loader
        m.submodules.loader = loader = loader_cls(cfg, credits=PEArray.credits(cfg))
        m.submodules.pe_array = pe = PEArray(cfg)
        m.submodules.output = out = (CompactOutput if cfg.output == "compact"
                                     else OutputStage)(cfg)
        wiring.connect(m, loader.o, pe.i)
        wiring.connect(m, pe.o, out.i)
        m.d.comb += pe.o_ready_next.eq(out.i_ready_next)
        if cfg.output == "compact":
            m.d.comb += pe.o_step.eq(out.i_step)
        # The loader's credit comes back through a register when the output stage takes a
        # block from the PE array.
        m.d.sync += loader.block_done.eq(out.i.valid & out.i.ready)

        # -- run state ----------------------------------------------------------------------
        busy = Signal(attrs=KEEP)  # not merged into its copies (busy_at)
        done = Signal()
        error = Signal()
        run_cycles = Signal(cfg.counter_bits)
        n_layers = Signal(8)
        layer = Signal(range(cfg.max_layers + 1))
        skip = Signal()
        epsilon = Signal(8)
        desc = Signal(descriptor_layout(cfg))
        # The output stage's own copy of the descriptor (its fields fan out to much of it).
        out_desc = Signal(descriptor_layout(cfg), attrs=KEEP)
        in_buf = Signal()          # the buffer the current layer reads
        # busy switches every memory port between the host and the compute pipeline: each
        # bank and memory has a copy of it (hw/fanout.py), taken from busy's next value.
        busy_set, busy_clr, busy_next = Signal(), Signal(), Signal()
        m.d.comb += busy_next.eq((busy | busy_set) & ~busy_clr)
        m.d.sync += busy.eq(busy_next)
        m.d.comb += [
            self.busy.eq(busy),
            loader.desc.eq(desc), loader.skip.eq(skip),
            out.desc.eq(out_desc), out.epsilon.eq(epsilon),
        ]

        # -- memories -----------------------------------------------------------------------
        WB = weight_memories(cfg)
        port_keys = ([("act", b) for b in range(NB)] + [("wgt", j) for j in range(WB)]
                     + ["misc"])
        busy_at = dict(zip(port_keys, copies(m, busy_next, len(port_keys), "busy")))
        def memory(name, width, depth):
            mem = Memory(shape=unsigned(width), depth=depth, init=[])
            m.submodules[name] = mem
            return mem

        # Each bank of the two ping-pong buffers is one memory, the buffer its address's top
        # bit: a layer reads one half and the output stage writes the other, through the
        # memory's one read and one write port, and nothing stands between a read port and the
        # register that takes its data (which can then be the block RAM's output register).
        ABW = max(1, (cfg.act_words // NB - 1).bit_length())   # in-bank address of a buffer
        act = [memory(f"act_{b}", 8 * C, 2 << ABW) for b in range(NB)]
        flag = [memory(f"flag_{b}", 1, 2 << ABW) for b in range(NB)]
        # Rows of the CHUNKED regions are padded to whole host words, one write lane each.
        rows = layout.memory_map(cfg)
        lanes = {r: -(-rows[r][0] // layout.CHUNK_BITS) for r in layout.CHUNKED}
        chunked = {r: lanes[r] * layout.CHUNK_BITS for r in layout.CHUNKED}
        shared = shared_regions(cfg)
        kw = layout.chunk_shift(rows[Region.WEIGHT][0])     # log2 host words per weight row
        if not shared:
            wgt = [memory(f"wgt_{j}", chunked[Region.WEIGHT], cfg.weight_words // C)
                   for j in range(C)]
        else:       # one single-ported memory (hw/spram.py): the compact loader's
            m.submodules.wgt_0 = wgt_mem = SinglePortMemory(
                chunked[Region.WEIGHT], weight_rows(cfg),
                granularity=layout.CHUNK_BITS if lanes[Region.WEIGHT] > 1 else None)
        mask = memory("mask", cfg.group_bits, cfg.mask_words)
        # The parameter rows (OW·53 bits) are split into memories of PARAM_LANES host words
        # each, so that each has its own address register next to its block RAMs.
        pgroups = [range(g, min(g + PARAM_LANES, lanes[Region.PARAM]))
                   for g in range(0, lanes[Region.PARAM], PARAM_LANES)]
        params = [memory(f"param_{n}", len(g) * layout.CHUNK_BITS, rows[Region.PARAM][1])
                  for n, g in enumerate(pgroups)]
        if not shared:
            desc_mem = memory("desc", chunked[Region.DESC], cfg.max_layers)
            count = memory("count", COUNTER_BITS, cfg.max_layers * len(COUNTERS))

        act_r = [mem.read_port() for mem in act]
        act_w = [mem.write_port() for mem in act]
        flag_r = [[mem.read_port() for _ in range(K)] for mem in flag]
        flag_w = [mem.write_port() for mem in flag]
        def chunk_port(mem, region):
            return mem.write_port(granularity=layout.CHUNK_BITS if lanes[region] > 1 else None)

        if not shared:
            wgt_r = [mem.read_port() for mem in wgt]
            wgt_w = [chunk_port(mem, Region.WEIGHT) for mem in wgt]
        else:
            wgt_r, wgt_w = [wgt_mem.read], [wgt_mem.write]
        mask_r, mask_w = mask.read_port(), mask.write_port()
        param_r = [mem.read_port() for mem in params]
        param_w = [mem.write_port(granularity=layout.CHUNK_BITS if len(g) > 1 else None)
                   for mem, g in zip(params, pgroups)]
        # The rows' bits (the padding to whole host words is never read: it reads as 0).
        param_data = Cat(port.data for port in param_r)[:rows[Region.PARAM][0]]
        if not shared:
            desc_r, desc_w = desc_mem.read_port(), chunk_port(desc_mem, Region.DESC)
            count_r, count_w = count.read_port(), count.write_port()

        # -- host bus -----------------------------------------------------------------------
        # Seven register stages, one command per cycle, and a response FIFO. Q holds the
        # accepted command and checks it; K holds it with the check's result (what makes it
        # erroneous) and decodes it; D holds the decoded command (addresses, data, one write
        # strobe per memory lane) and drives the memory ports, so that no port sees more than
        # a few gates after a register; F holds the memories' read data, G each region's word,
        # and H the response, which it puts into the FIFO (see "read back" below).
        # The stages never stall (nothing fans out from rsp.ready): cmd.ready, a register, is
        # high while fewer than RSP_DEPTH commands are taken and their responses not yet.
        # The compact bus (Config.bus) takes one command at a time: Q's register holds it until
        # its response is taken, K and D use it as it is, F is the memories' outputs themselves
        # (they hold the word read while the command stays), G's words are wires, and H holds
        # the response on rsp (no FIFO).
        serial = cfg.bus == "compact"
        RSP_DEPTH = 1 if serial else 8

        def held(value, n, name):
            """``n`` copies of a command's field for the parts that use it, a stage later:
            registers; on the compact bus, which holds the command, the field itself."""
            return [value] * n if serial else copies(m, value, n, name)

        if not serial:
            m.submodules.rsp_fifo = rsp_fifo = SyncFIFOBuffered(
                width=len(self.rsp.payload.as_value()), depth=RSP_DEPTH)
        pending = Signal(range(RSP_DEPTH + 1))   # taken commands whose response is not out
        cmd_ready = Signal()
        take_cmd = Signal()
        q_valid = Signal()
        cmd = Signal.like(self.cmd.payload)       # Q: the command
        k_valid = Signal()
        k_cmd = cmd if serial else Signal.like(cmd)   # K: the command, checked in Q
        k_refused = Signal()                      # K: erroneous whether busy or not (but
                                                  # for the width check, which k_bad adds)
        k_bad = Signal()                          # K: erroneous whether busy or not
        k_idle = Signal()                         # K: erroneous while busy
        d_valid = Signal()
        d_cmd = (cmd if serial                    # D: the command, decoded below (not merged
                 else Signal.like(cmd, attrs=KEEP))   # into the memories' copies of it, d_at)
        d_refused = Signal()                      # D: erroneous whether busy or not
        d_idle = Signal()                         # D: erroneous while busy
        d_bad = Signal()
        pop = Signal()
        pending_next = Signal.like(pending)
        h_word = Signal.like(self.rsp.payload)    # H: the response
        m.d.comb += [
            self.cmd.ready.eq(cmd_ready),
            take_cmd.eq(self.cmd.valid & cmd_ready),
            d_bad.eq(d_refused | (d_idle & busy_at["misc"])),
            pending_next.eq(pending + take_cmd - pop),
        ]
        if serial:
            rsp_valid = Signal()
            m.d.comb += [self.rsp.valid.eq(rsp_valid), self.rsp.payload.eq(h_word),
                         pop.eq(rsp_valid & self.rsp.ready)]
        else:
            m.d.comb += [self.rsp.valid.eq(rsp_fifo.r_rdy),
                         self.rsp.payload.eq(rsp_fifo.r_data),
                         rsp_fifo.r_en.eq(self.rsp.ready),
                         pop.eq(rsp_fifo.r_rdy & self.rsp.ready)]
        m.d.sync += [pending.eq(pending_next), cmd_ready.eq(pending_next < RSP_DEPTH)]
        if serial:
            with m.If(take_cmd):
                m.d.sync += cmd.eq(self.cmd.payload)
        else:
            m.d.sync += [cmd.eq(self.cmd.payload), k_cmd.eq(cmd), d_cmd.eq(k_cmd)]
        m.d.sync += [q_valid.eq(take_cmd), k_valid.eq(q_valid), d_valid.eq(k_valid),
                     d_refused.eq(k_bad), d_idle.eq(k_idle)]
        # After D, a command is only read back: E to G carry whether there is one, whether it
        # is erroneous (it reads 0), whether it reads, and its region; H only whether there is
        # one (G worked out the response).
        def later(values, stage):
            regs = (Signal(name=f"{stage}_valid"), Signal(name=f"{stage}_error"),
                    Signal(name=f"{stage}_read"), Signal(4, name=f"{stage}_region"))
            m.d.sync += [reg.eq(value) for reg, value in zip(regs, values)]
            return regs

        g_valid, g_error, g_read, g_region = later(
            later(later((d_valid, d_bad, ~d_cmd.write, d_cmd.region), "e"), "f"), "g")
        if not serial:
            h_valid = Signal()              # the response goes into the FIFO
            m.d.sync += h_valid.eq(g_valid)

        # Q: which command is acceptable, and what it touches.
        in_range = Signal()
        with m.Switch(cmd.region):
            for region, (_, depth) in regions.items():
                with m.Case(region):
                    m.d.comb += in_range.eq(cmd.index < depth)
        m.d.sync += [k_refused.eq(~in_range
                                  | (cmd.write & (cmd.region == Region.COUNT))
                                  | (cmd.write & (cmd.region == Region.CTRL) & (cmd.index != 0))),
                     k_idle.eq((cmd.region < Region.COUNT)
                               | ((cmd.region == Region.COUNT) if shared else 0)
                               | (cmd.write & (cmd.region == Region.CTRL)))]
        # K: a word with bits beyond its region's width is refused too. Whether it has them
        # (an OR over up to 64 bits of the data word) is worked out in Q per width.
        widths = sorted({w for w, _ in regions.values() if w < len(cmd.data)})
        k_beyond = Signal(len(widths))
        m.d.sync += [k_beyond[n].eq(cmd.data[w:] != 0) for n, w in enumerate(widths)]
        m.d.comb += k_bad.eq(k_refused)
        with m.Switch(k_cmd.region):
            for region, (width, _) in regions.items():
                if width < len(cmd.data):
                    with m.Case(region):
                        with m.If(k_cmd.write & k_beyond[widths.index(width)]):
                            m.d.comb += k_bad.eq(1)

        def lane(index, banks):
            """(bank, in-bank address) of a host index in a banked region."""
            shift = (banks - 1).bit_length()
            return index[:shift] if banks > 1 else Const(0), index[shift:]

        def chunk(index, data_word, region):
            """(row index, one-hot write lanes, data) of a host word of a CHUNKED region: the
            word goes to its lane of the row, bits past the row's width cleared."""
            k = layout.chunk_shift(rows[region][0])
            n = lanes[region]
            sel = index[:k] if k else Const(0)
            onehot = Cat(*[sel == i for i in range(n)])
            word = data_word[:layout.CHUNK_BITS]
            wdata = Cat(*[word] * n) & Const((1 << rows[region][0]) - 1, n * layout.CHUNK_BITS)
            return index[k:], onehot, wdata

        def strobe(name, width, value, port="misc"):
            """A write strobe of the command in K, registered into D: the lanes ``value`` of a
            write to this memory, and (its own copy of) whether K holds an acceptable write;
            it only still needs the check against ``busy`` (``port``'s copy; none if ``port`` is
            None)."""
            lanes_ = Signal(width, name=f"d_{name}")
            ok, = copies(m, k_valid & k_cmd.write & ~k_bad, 1, f"d_{name}_ok")
            m.d.sync += lanes_.eq(value)
            return Mux(ok & (~busy_at[port] if port else 1), lanes_, 0)

        # Host access to the memories shares the compute ports; it is only allowed while idle.
        # In D each activation bank and each weight bank has its own copy of the command's
        # index and data word, next to its block RAMs (hw/fanout.py), an activation bank's also
        # of the buffer it addresses (ACT0/FLAG0: 0, ACT1/FLAG1: 1); the rest use d_cmd.
        dw = min(len(cmd.data), max(8 * C, layout.CHUNK_BITS))
        IW = len(cmd.index)
        d_at = {("act", b): (reg[:IW], reg[IW:IW + dw], reg[IW + dw])
                for b, reg in enumerate(held(Cat(k_cmd.index, k_cmd.data[:dw], k_cmd.region[0]),
                                             NB, "d_at_act"))}
        # The weight memory's host word: the weights' index, or that of a region it shares
        # (shared_regions: the offsets keep a word's lane in the index's low bits).
        k_windex, k_wregion = k_cmd.index, k_cmd.region == Region.WEIGHT
        if shared:
            k_windex = Signal(max(IW, ((weight_rows(cfg) << kw) - 1).bit_length()))
            m.d.comb += k_windex.eq(k_cmd.index)
            for region, offset in shared.items():
                with m.If(k_cmd.region == region):
                    m.d.comb += k_windex.eq(k_cmd.index + offset)
            k_wregion = k_cmd.region.matches(Region.WEIGHT, *shared)
        WIW = len(k_windex)
        d_at.update({("wgt", j): (reg[:WIW], reg[WIW:])
                     for j, reg in enumerate(held(Cat(k_windex, k_cmd.data[:dw]), WB,
                                                  "d_at_wgt"))})
        k_hb, _ = lane(k_cmd.index, NB)
        k_wrow, k_wlanes, _ = chunk(k_cmd.index, k_cmd.data, Region.WEIGHT)
        k_wb, _ = lane(k_wrow, WB)
        k_prow, k_planes, _ = chunk(k_cmd.index, k_cmd.data, Region.PARAM)
        if not shared:
            drow, _, dword = chunk(d_cmd.index, d_cmd.data, Region.DESC)
            _, k_dlanes, _ = chunk(k_cmd.index, k_cmd.data, Region.DESC)
        k_act = k_cmd.region.matches(Region.ACT0, Region.ACT1)
        k_flag = k_cmd.region.matches(Region.FLAG0, Region.FLAG1)
        for b in range(NB):
            act_en = strobe(f"act_{b}", 1, (k_hb == b) & k_act, ("act", b))
            flag_en = strobe(f"flag_{b}", 1, (k_hb == b) & k_flag, ("act", b))
            d_index, d_data, d_buf = d_at["act", b]
            ha = Cat(lane(d_index, NB)[1][:ABW], d_buf)
            with m.If(~busy_at["act", b]):
                m.d.comb += [
                    act_r[b].addr.eq(ha), flag_r[b][0].addr.eq(ha),
                    act_r[b].en.eq(1), flag_r[b][0].en.eq(1),
                    act_w[b].addr.eq(ha), act_w[b].data.eq(d_data),
                    flag_w[b].addr.eq(ha), flag_w[b].data.eq(d_data),
                    act_w[b].en.eq(act_en), flag_w[b].en.eq(flag_en),
                ]
        for j in range(WB):
            wgt_en = strobe(f"wgt_{j}", lanes[Region.WEIGHT],
                            Mux((k_wb == j) & k_wregion, k_wlanes, 0),
                            ("wgt", j))
            wrow, _, wword = chunk(*d_at["wgt", j], Region.WEIGHT)
            _, wa = lane(wrow, WB)
            with m.If(~busy_at["wgt", j]):
                m.d.comb += [wgt_r[j].addr.eq(wa), wgt_r[j].en.eq(1), wgt_w[j].addr.eq(wa),
                             wgt_w[j].data.eq(wword), wgt_w[j].en.eq(wgt_en)]
        with m.If(~busy_at["misc"]):
            m.d.comb += [mask_r.addr.eq(d_cmd.index), mask_r.en.eq(1)]
            if not shared:
                m.d.comb += [desc_r.addr.eq(drow), desc_r.en.eq(1)]
        m.d.comb += [
            mask_w.addr.eq(d_cmd.index), mask_w.data.eq(d_cmd.data),
            mask_w.en.eq(strobe("mask", 1, k_cmd.region == Region.MASK)),
        ]
        if not shared:
            m.d.comb += [
                desc_w.addr.eq(drow), desc_w.data.eq(dword),
                desc_w.en.eq(strobe("desc", lanes[Region.DESC],
                                    Mux(k_cmd.region == Region.DESC, k_dlanes, 0))),
                count_r.addr.eq(d_cmd.index), count_r.en.eq(1),
            ]
        # Each parameter memory has registers of its own for its address (read and write) and
        # the host's data word: the output stage's param_addr and the host's row, both taking
        # the next values (the read port keeps its latency), and its copy of busy, which
        # selects between them like every other port's (the sequencer is far away).
        p_out = copies(m, out.param_addr_next, len(pgroups), "param_addr_out")
        p_host = held(k_prow, len(pgroups), "param_addr_host")
        p_busy = copies(m, busy_next, len(pgroups), "param_busy")
        p_word = held(k_cmd.data[:layout.CHUNK_BITS], len(pgroups), "param_word")
        p_en = strobe("param", lanes[Region.PARAM],
                      Mux(k_cmd.region == Region.PARAM, k_planes, 0))
        for n, g in enumerate(pgroups):
            p_addr = Mux(p_busy[n], p_out[n], p_host[n])
            m.d.comb += [param_r[n].addr.eq(p_addr), param_r[n].en.eq(1),
                         param_w[n].addr.eq(p_addr),
                         param_w[n].data.eq(Cat(*[p_word[n]] * len(g))),
                         param_w[n].en.eq(p_en[g.start:g.stop])]

        # -- read back. E gets the memories' read data and registers it as it is (F): block
        # RAMs' outputs are slow (5.8 ns clock to data on ECP5), so nothing but a wire follows
        # them. Registers of the loader and the output stage take the weight banks' and the
        # parameters' words in every cycle too; Yosys merges these with them. F selects each
        # region's word at the command's index, registered in G; the regions that select a word
        # by the index have a copy of it each, next to their memories. For the weight and
        # parameter rows, which span dozens of block RAMs, F registers one word per group of
        # them, and G selects the group. G selects the region's word, registered in H, which
        # puts the response into the FIFO.
        rdata = Signal.like(self.rsp.payload.data)
        info = [HW_VERSION] + layout.config_words(cfg)

        def raw(value, name):
            if serial:
                return value
            reg = Signal.like(value, name=f"f_{name}")
            m.d.sync += reg.eq(value)
            return reg

        f_cmd_index = raw(d_cmd.index, "index")
        selecting = (Region.DESC, Region.CTRL, Region.ACT0, Region.FLAG0)
        f_index = dict(zip(selecting, held(f_cmd_index, len(selecting), "f_index")))

        def select(index, words):
            """``words[index]`` (``words`` a list or a dict), 0 past the end."""
            word = Signal.like(rdata)
            with m.Switch(index):
                for n, value in (words.items() if isinstance(words, dict) else enumerate(words)):
                    with m.Case(n):
                        m.d.comb += word.eq(value)
            return word

        def staged(groups, lo_hi, name):
            """The word at the command's index in two steps, for the regions whose rows span
            many block RAMs: F registers each group's word (``groups[g]``: {lo: word}), next to
            the group's memories and from a copy of the index of its own; G selects the group.
            ``lo_hi(index)`` is the (lo, hi) of an index."""
            index = held(f_cmd_index, len(groups) + 1, f"f_{name}_index")
            regs = [Signal.like(rdata, name=f"g_{name}_{g}") for g in range(len(groups))]
            m.d.sync += [reg.eq(select(lo_hi(i)[0], words))
                         for reg, words, i in zip(regs, groups, index)]
            hi = lo_hi(index[-1])[1]
            g_hi = Signal.like(hi, name=f"g_{name}_hi")
            m.d.sync += g_hi.eq(hi)
            return select(g_hi, regs)

        def lanes_of(row, region):
            """The host words of a row of a CHUNKED region."""
            return [row.word_select(i, layout.CHUNK_BITS) for i in range(lanes[region])]

        def lane_of(index, region):
            """The lane an index selects in a row of a CHUNKED region, and the row."""
            k = layout.chunk_shift(rows[region][0])
            return (index[:k] if k else Const(0)), index[k:]

        def wgt_lo_hi(index):
            sel, row = lane_of(index, Region.WEIGHT)
            return sel, lane(row, WB)[0]

        def param_lo_hi(index):
            sel, _ = lane_of(index, Region.PARAM)
            return sel, sum((sel >= g.start for g in pgroups[1:]), Const(0, 1))

        f_wgt = [raw(wgt_r[j].data, f"wgt{j}") for j in range(WB)]
        p_lanes = lanes_of(raw(param_data, "param"), Region.PARAM)
        g_late = {
            Region.WEIGHT: staged([dict(enumerate(lanes_of(f_wgt[j], Region.WEIGHT)))
                                   for j in range(WB)], wgt_lo_hi, "wgt"),
            Region.PARAM: staged([{n: p_lanes[n] for n in g} for g in pgroups], param_lo_hi,
                                 "param"),
        }
        candidates = {Region.MASK: raw(mask_r.data, "mask")}
        if not shared:
            candidates[Region.DESC] = select(lane_of(f_index[Region.DESC], Region.DESC)[0],
                                             lanes_of(raw(desc_r.data, "desc"), Region.DESC))
            candidates[Region.COUNT] = raw(count_r.data, "count")
        candidates[Region.CTRL] = select(
            f_index[Region.CTRL],
            [raw(Cat(busy, done, error, Const(0, 5), run_cycles), "status")] + info)
        # A buffer's read port has the buffer in its address: ACT0 and ACT1 (FLAG0, FLAG1)
        # read the same data registers and share G's word.
        candidates[Region.ACT0] = select(lane(f_index[Region.ACT0], NB)[0],
                                         [raw(act_r[b].data, f"act_{b}") for b in range(NB)])
        candidates[Region.FLAG0] = select(lane(f_index[Region.FLAG0], NB)[0],
                                          [raw(flag_r[b][0].data, f"flag_{b}")
                                           for b in range(NB)])
        g_words = {region: Signal.like(rdata, name=f"g_word_{int(region)}")
                   for region in candidates}
        g_domain = m.d.comb if serial else m.d.sync
        g_domain += [g_words[region].eq(value) for region, value in candidates.items()]
        g_words.update(g_late)
        if shared:
            # The shared regions read the weight memory's word; a descriptor's words past its
            # row's width read 0 (never written by the sequencer, they hold anything).
            width = rows[Region.DESC][0]
            g_dmask = Signal(layout.CHUNK_BITS)
            m.d.sync += g_dmask.eq(select(
                lane_of(f_index[Region.DESC], Region.DESC)[0],
                [(1 << min(max(width - n * layout.CHUNK_BITS, 0), layout.CHUNK_BITS)) - 1
                 for n in range(1 << layout.chunk_shift(width))]))
            g_words[Region.DESC] = g_late[Region.WEIGHT] & g_dmask
            g_words[Region.COUNT] = g_late[Region.WEIGHT]
        g_words[Region.ACT1], g_words[Region.FLAG1] = g_words[Region.ACT0], g_words[Region.FLAG0]
        with m.Switch(g_region):
            for region, g_word in g_words.items():
                with m.Case(region):
                    m.d.comb += rdata.eq(g_word)
        response = [h_word.data.eq(Mux(g_read & ~g_error, rdata, 0)), h_word.error.eq(g_error)]
        if serial:                          # held on rsp until taken
            with m.If(g_valid):
                m.d.sync += response
            m.d.sync += rsp_valid.eq(g_valid | (rsp_valid & ~self.rsp.ready))
        else:
            m.d.sync += response
            m.d.comb += [rsp_fifo.w_en.eq(h_valid), rsp_fifo.w_data.eq(h_word)]

        # -- sequencer ----------------------------------------------------------------------
        run = Signal()
        run_word = data.View(data.StructLayout(dict(layout.RUN_FIELDS)), d_cmd.data[:17])
        # No check against busy: the sequencer looks at run only while idle, when busy is low
        # (a run while busy is refused, d_bad), so busy's next value does not depend on busy.
        m.d.comb += run.eq(strobe("run", 1, k_cmd.region == Region.CTRL, port=None))

        # (Config.counter_bits wide: sw/layout.py refuses a layer whose counts could pass
        # their largest value; the cycle counters stop there, _count_up.)
        counters = {name: _Counter(cfg.counter_bits) for name in COUNTERS
                    if name != "busy_cycles"}
        for name, counter in counters.items():
            m.submodules[f"count_{name}"] = counter
        busy_time = Signal(cfg.counter_bits)     # cycles since the layer started
        last_write = Signal(cfg.counter_bits)    # busy_time just after the layer's latest write
        # Blocks the PE array got (their last slot) and the output stage has not yet taken: at
        # most the loader's credits.
        blocks = Signal(range(PEArray.credits(cfg) + 1))
        store = Signal(range(len(COUNTERS) + 1))
        # The count memory's write address, a register: the layer's first counter's row from
        # DECODE on, counting up as STORE writes.
        count_addr = Signal(range(cfg.max_layers * len(COUNTERS)))
        count_data, count_en = Signal(COUNTER_BITS), Signal()
        if not shared:
            m.d.comb += [count_w.addr.eq(count_addr), count_w.data.eq(count_data),
                         count_w.en.eq(count_en)]
        else:
            # The descriptor's row the sequencer reads: it spans several of the weight
            # memory's rows.
            part = Signal(range(1 << (layout.chunk_shift(rows[Region.DESC][0]) - kw)))
            part_next = Signal.like(part)   # the row read in this cycle
            # The sequencer reaches the weight memory while the loader is idle: a
            # descriptor's rows (part) as it loads one, a counter's lane as it stores one.
            drow = shared[Region.DESC] >> kw
            seq_addr, seq_read = Signal.like(wgt_r[0].addr), Signal()
            m.d.comb += seq_addr.eq(Mux(seq_read, drow + Cat(part_next, layer),
                                        (shared[Region.COUNT] >> kw) + (count_addr >> kw)))
            m.d.sync += part.eq(part_next)
            with m.If(busy_at["wgt", 0]):
                m.d.comb += [wgt_r[0].addr.eq(seq_addr), wgt_r[0].en.eq(seq_read),
                             wgt_w[0].addr.eq(seq_addr),
                             wgt_w[0].data.eq(Cat(*[count_data] * (1 << kw))),
                             wgt_w[0].en.eq(Mux(count_en, 1 << count_addr[:kw], 0))]

        with m.If(busy):
            m.d.sync += run_cycles.eq(_count_up(run_cycles))
        m.d.sync += blocks.eq(blocks + (pe.i.valid & pe.i.payload.last)
                              - (out.i.valid & out.i.ready))

        self._connect_compute(m, cfg, loader, out, counters, busy_at, in_buf, act_r, act_w,
                              flag_r, flag_w, wgt_r, mask_r, param_data)
        with m.If(Cat(lane.en for lane in out.wr).any()):    # (landing a cycle later, or
            m.d.sync += last_write.eq(busy_time if cfg.output == "compact"     # at once)
                                      else _count_up(busy_time))

        # The layer has drained: a register, high from the second cycle on in which the loader
        # is done, every block the PE array got has been taken by the output stage and nothing
        # is in flight (it stays so until the next layer starts).
        drained = Signal()
        # The counters clear in the cycle after DECODE (the loader starts counting later still),
        # each from a copy of its own of the register that says so, next to it.
        decode = Signal()
        for counter, clear in zip(counters.values(),
                                  copies(m, decode, len(counters), "count_clear")):
            m.d.comb += counter.clear.eq(clear)
        with m.FSM() as fsm:
            with m.State("IDLE"):
                with m.If(run):
                    m.d.sync += [n_layers.eq(run_word.layers), skip.eq(run_word.skip),
                                 epsilon.eq(run_word.epsilon), layer.eq(0),
                                 done.eq(0), error.eq(0), run_cycles.eq(0)]
                    m.d.comb += busy_set.eq(1)
                    m.next = "LOAD"
            with m.State("LOAD"):
                with m.If(layer == n_layers):
                    m.d.sync += done.eq(1)
                    m.d.comb += busy_clr.eq(1)
                    m.next = "IDLE"
                with m.Else():
                    if shared:
                        m.d.comb += seq_read.eq(1)
                    else:
                        m.d.comb += desc_r.addr.eq(layer)
                    m.next = "DECODE"
            with m.State("DECODE"):
                if shared:          # one weight row a cycle
                    width = len(wgt_r[0].data)
                    with m.Switch(part):
                        for n in range(1 << len(part)):
                            with m.Case(n):
                                m.d.sync += [reg.as_value()[n * width:(n + 1) * width]
                                             .eq(wgt_r[0].data) for reg in (desc, out_desc)]
                    loaded = part == (1 << len(part)) - 1
                    with m.If(~loaded):
                        m.d.comb += seq_read.eq(1)
                        m.d.comb += part_next.eq(part + 1)
                else:
                    m.d.sync += [desc.eq(desc_r.data), out_desc.eq(desc_r.data)]
                    loaded = 1
                with m.If(loaded):
                    m.d.sync += [in_buf.eq(layer[0]), busy_time.eq(0), last_write.eq(0),
                                 count_addr.eq(lut_mul(layer, len(COUNTERS)))]
                    m.d.comb += decode.eq(1)
                    m.next = "CHECK"
            with m.State("CHECK"):
                with m.If(desc.mode != layout.MODE_INT8):
                    m.d.sync += [done.eq(1), error.eq(1)]
                    m.d.comb += busy_clr.eq(1)
                    m.next = "IDLE"
                with m.Else():
                    m.d.comb += loader.start.eq(1)
                    m.next = "RUN"
            with m.State("RUN"):
                m.d.sync += busy_time.eq(_count_up(busy_time))
                with m.If(drained):
                    m.d.sync += store.eq(0)
                    m.next = "STORE"
            with m.State("STORE"):
                for i, name in enumerate(COUNTERS):
                    with m.If(store == i):
                        value = last_write if name == "busy_cycles" else counters[name].value
                        m.d.comb += [count_data.eq(value), count_en.eq(1)]
                m.d.sync += [store.eq(store + 1), count_addr.eq(count_addr + 1)]
                with m.If(store == len(COUNTERS) - 1):
                    m.d.sync += layer.eq(layer + 1)
                    m.next = "LOAD"
        m.d.sync += drained.eq(fsm.ongoing("RUN") & loader.done & (blocks == 0) & out.idle
                               & ~pe.o.valid & ~pe.i.valid)
        return m

    @staticmethod
    def _connect_compute(m, cfg, loader, out, counters, busy_at, in_buf, act_r, act_w, flag_r,
                         flag_w, wgt_r, mask_r, param_data):
        """While a run is in progress (each port: its copy of busy) the loader reads the input
        buffer, the output stage writes the other one, and their counter increments feed the
        layer's counters."""
        NB, C, K = cfg.act_banks, cfg.cols, flag_ports(cfg)
        shift = (NB - 1).bit_length()
        # Each bank has a copy of in_buf (a cycle late: it changes when a layer is decoded,
        # cycles before its first read).
        in_buf_at = copies(m, in_buf, NB, "in_buf")
        for b in range(NB):
            abw = len(loader.act_addr[b])
            # Output lanes address distinct banks; each bank takes the lane aimed at it into a
            # register of its own, which drives its block RAMs' write ports (the lanes' logic
            # and the block RAMs are far apart). A write lands a cycle after it is on its lane,
            # long before the next layer reads the buffer. The compact output stage's one lane
            # is a register of a small design: its writes go to the banks at once.
            w_en = Signal(name=f"w_en_{b}")
            w_addr = Signal.like(act_w[b].addr, name=f"w_addr_{b}")
            w_data = Signal.like(act_w[b].data, name=f"w_data_{b}")
            w_flag = Signal(name=f"w_flag_{b}")
            w = m.d.comb if cfg.output == "compact" else m.d.sync
            w += w_en.eq(0)
            for lane in out.wr:
                with m.If(lane.en & (lane.index[:shift] == b if NB > 1 else 1)):
                    w += [w_en.eq(1), w_data.eq(lane.data), w_flag.eq(lane.flag),
                          w_addr.eq(Cat(lane.index[shift:][:abw], ~in_buf_at[b]))]
            with m.If(busy_at["act", b]):
                m.d.comb += [act_r[b].addr.eq(Cat(loader.act_addr[b], in_buf_at[b])),
                             act_r[b].en.eq(loader.act_en[b])]
                for k in range(K):
                    m.d.comb += [flag_r[b][k].addr.eq(Cat(loader.flag_addr[b][k], in_buf_at[b])),
                                 flag_r[b][k].en.eq(loader.flag_en)]
                m.d.comb += [
                    act_w[b].addr.eq(w_addr), act_w[b].data.eq(w_data), act_w[b].en.eq(w_en),
                    flag_w[b].addr.eq(w_addr), flag_w[b].data.eq(w_flag), flag_w[b].en.eq(w_en),
                ]
        if not shared_regions(cfg):        # one memory per bank (as elaborate builds them)
            for j in range(C):
                with m.If(busy_at["wgt", j]):
                    m.d.comb += [wgt_r[j].addr.eq(loader.wgt_addr[j]),
                                 wgt_r[j].en.eq(loader.wgt_en[j])]
        else:
            # One memory, row = in-bank address · C + bank; the loader enables one bank's port
            # at a time, and names that bank in wgt_bank (hw/compact_loader.py). Only while it
            # runs: between layers the sequencer reads and writes the memory (above).
            with m.If(busy_at["wgt", 0] & loader.busy):
                m.d.comb += [wgt_r[0].addr.eq(Cat(loader.wgt_bank[:(C - 1).bit_length()],
                                                  loader.wgt_addr[0])),
                             wgt_r[0].en.eq(Cat(*loader.wgt_en).any())]
        with m.If(busy_at["misc"]):
            m.d.comb += [mask_r.addr.eq(loader.mask_addr), mask_r.en.eq(loader.mask_en)]
        for b in range(NB):
            m.d.comb += loader.act_data[b].eq(act_r[b].data)
            for k in range(K):
                m.d.comb += loader.flag_data[b][k].eq(flag_r[b][k].data)
        for j in range(C):
            m.d.comb += loader.wgt_data[j].eq(wgt_r[j if len(wgt_r) > 1 else 0].data)
        m.d.comb += [
            loader.mask_data.eq(mask_r.data), out.param_data.eq(param_data),
            counters["issue_slots"].inc.eq(loader.issue_slots),
            counters["issue_slots_skipped"].inc.eq(loader.issue_slots_skipped),
            counters["act_bytes_read"].inc.eq(loader.act_bytes_read),
            counters["weight_bytes_read"].inc.eq(loader.weight_bytes_read),
            counters["out_tiles_flagged"].inc.eq(out.flagged),
        ]
