"""cocotb bench of hw.spram.SinglePortMemory as built for an iCE40 UltraPlus (SB_SPRAM256KA
blocks, simulated with Yosys's model of them): words written lane by lane read back, a read
port's data held while it is not enabled, as the core's users of it expect."""

import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge

WIDTH, DEPTH, LANE = 64, 8192, 32


@cocotb.test()
async def write_read_hold(dut):
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    rng = random.Random(5)
    dut.read_en.value = 0
    dut.write_en.value = 0
    model = {}
    await RisingEdge(dut.clk)
    # writes, whole words and single lanes, to random addresses (the same address on both
    # ports, as the core presents it)
    for _ in range(300):
        a = rng.randrange(DEPTH)
        d = rng.getrandbits(WIDTH)
        lanes = rng.choice([0b11, 0b01, 0b10])
        dut.write_addr.value = a
        dut.read_addr.value = a
        dut.write_data.value = d
        dut.write_en.value = lanes
        dut.read_en.value = 0
        await RisingEdge(dut.clk)
        old = model.get(a, 0)
        for n in range(WIDTH // LANE):
            if lanes >> n & 1:
                mask = ((1 << LANE) - 1) << (n * LANE)
                old = (old & ~mask) | (d & mask)
        model[a] = old
    dut.write_en.value = 0
    # reads: the data of the address read in one cycle is there in the next, and stays while
    # read_en is low
    addrs = sorted(model)
    rng.shuffle(addrs)
    for a in addrs:
        dut.read_addr.value = a
        dut.read_en.value = 1
        await RisingEdge(dut.clk)
        dut.read_en.value = 0
        dut.read_addr.value = rng.randrange(DEPTH)
        for _ in range(rng.randrange(1, 3)):
            await ReadOnly()
            assert int(dut.read_data.value) == model[a], (a, hex(int(dut.read_data.value)),
                                                          hex(model[a]))
            await RisingEdge(dut.clk)
