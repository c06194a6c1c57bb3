/**
 * Enumerates PCI bus 0 through conf1 and sets functions up the way firmware would (there is none under qtest):
 * BAR sizing and assignment, the command register, the capability list.
 *
 * BAR sizing (PCI Local Bus 3.0 §6.2.5.1): with decoding off, write all ones, read back, the size is the two's
 * complement of the writable address bits; a 64-bit memory BAR takes the next BAR register as its high half.
 * Addresses come from two bump allocators: memory BARs from {@link PCI_DEFAULT_MMIO_BASE} (0xE0000000, inside
 * the PC machine's PCI hole as long as RAM stays below it, which {@link QTEST_MAX_MEM_SIZE} guarantees) up to
 * 0xFEC00000 (the I/O APIC), I/O BARs from 0xC000 to 0xFFFF. Each BAR is aligned to its size.
 */
import {
  PCI_HEADER_TYPE_MULTI_FUNCTION,
  PCI_STATUS_CAP_LIST,
  PciCommand,
  PciConfig,
  PciConfigReg,
  formatPciAddress,
  type PciAddress,
  type PortIo,
} from './pci-config.js';

export const PCI_DEFAULT_MMIO_BASE = 0xe000_0000;
export const PCI_DEFAULT_MMIO_LIMIT = 0xfec0_0000;
export const PCI_DEFAULT_IO_BASE = 0xc000;
export const PCI_DEFAULT_IO_LIMIT = 0x1_0000;
/** Guard against a looping capability list (48 = (256 - 64) / 4 capabilities at most). */
const MAX_CAPABILITIES = 48;

export type PciScanErrorCode = 'BAR_SPACE_EXHAUSTED' | 'BAD_CAPABILITY_LIST' | 'NOT_TYPE0';

export class PciScanError extends Error {
  readonly code: PciScanErrorCode;
  readonly value: unknown;
  constructor(code: PciScanErrorCode, message: string, value: unknown) {
    super(message);
    this.name = 'PciScanError';
    this.code = code;
    this.value = value;
  }
}

export interface PciBar {
  readonly index: number;
  readonly kind: 'memory' | 'io';
  readonly is64: boolean;
  readonly prefetchable: boolean;
  readonly size: number;
  /** Assigned bus address. */
  readonly address: number;
}

export interface PciCapability {
  readonly id: number;
  /** Offset of the capability in configuration space. */
  readonly offset: number;
}

export interface PciBusOptions {
  readonly mmioBase?: number;
  readonly mmioLimit?: number;
  readonly ioBase?: number;
  readonly ioLimit?: number;
}

/** One function found on the bus. */
export class PciFunction {
  readonly config: PciConfig;
  readonly address: PciAddress;
  readonly vendorId: number;
  readonly deviceId: number;
  readonly revision: number;
  /** base class << 16 | subclass << 8 | prog-if. */
  readonly classCode: number;
  readonly headerType: number;
  readonly subsystemVendorId: number;
  readonly subsystemId: number;
  readonly #bus: PciBus;
  #bars: readonly (PciBar | undefined)[] | undefined;

  /** @internal made by {@link PciBus.scan} */
  constructor(
    bus: PciBus,
    config: PciConfig,
    ids: {
      vendorId: number;
      deviceId: number;
      revision: number;
      classCode: number;
      headerType: number;
      subsystemVendorId: number;
      subsystemId: number;
    },
  ) {
    this.#bus = bus;
    this.config = config;
    this.address = config.address;
    this.vendorId = ids.vendorId;
    this.deviceId = ids.deviceId;
    this.revision = ids.revision;
    this.classCode = ids.classCode;
    this.headerType = ids.headerType;
    this.subsystemVendorId = ids.subsystemVendorId;
    this.subsystemId = ids.subsystemId;
  }

  /** `pci:00:02.0` */
  get location(): string {
    return `pci:${formatPciAddress(this.address)}`;
  }

  /** The BARs after {@link assignBars} (index = BAR number; the high half of a 64-bit BAR is undefined). */
  get bars(): readonly (PciBar | undefined)[] {
    return this.#bars ?? [];
  }

  /**
   * Sizes every BAR and gives it an address (once; later calls return the same BARs). Decoding is off while
   * sizing and left off: call {@link enable} afterwards.
   */
  async assignBars(): Promise<readonly (PciBar | undefined)[]> {
    if (this.#bars !== undefined) return this.#bars;
    if ((this.headerType & 0x7f) !== 0) {
      throw new PciScanError(
        'NOT_TYPE0',
        `${this.location}: header type ${this.headerType} has no type-0 BARs`,
        this.headerType,
      );
    }
    const cfg = this.config;
    const command = await cfg.readU16(PciConfigReg.COMMAND);
    await cfg.writeU16(PciConfigReg.COMMAND, command & ~(PciCommand.IO | PciCommand.MEMORY));
    const bars: (PciBar | undefined)[] = [];
    for (let i = 0; i < 6; i++) {
      const reg = PciConfigReg.BAR0 + 4 * i;
      const original = await cfg.readU32(reg);
      await cfg.writeU32(reg, 0xffff_ffff);
      const probe = await cfg.readU32(reg);
      if ((original & 1) === 1) {
        // I/O BAR: bits 31:2 address (only 16 decode on x86).
        const mask = probe & ~3 & 0xffff;
        if (mask === 0) {
          await cfg.writeU32(reg, original);
          bars.push(undefined);
          continue;
        }
        const size = (~mask & 0xffff) + 1;
        const address = this.#bus._allocIo(size, this.location, i);
        await cfg.writeU32(reg, address | 1);
        bars.push({ index: i, kind: 'io', is64: false, prefetchable: false, size, address });
        continue;
      }
      const type = (original >> 1) & 3;
      const prefetchable = (original & 8) !== 0;
      const is64 = type === 2 && i < 5;
      let mask = BigInt((probe & ~0xf) >>> 0);
      if (is64) {
        const high = reg + 4;
        await cfg.writeU32(high, 0xffff_ffff);
        mask |= BigInt(await cfg.readU32(high)) << 32n;
      } else {
        mask |= 0xffff_ffff_0000_0000n;
      }
      if ((mask & 0xffff_ffffn) === 0n && !is64) {
        await cfg.writeU32(reg, original);
        bars.push(undefined);
        continue;
      }
      if (mask === 0n) {
        await cfg.writeU32(reg, original);
        await cfg.writeU32(reg + 4, 0);
        bars.push(undefined, undefined);
        i++;
        continue;
      }
      const size = Number((~mask & 0xffff_ffff_ffff_ffffn) + 1n);
      const address = this.#bus._allocMmio(size, this.location, i);
      await cfg.writeU32(reg, address >>> 0);
      if (is64) await cfg.writeU32(reg + 4, 0);
      bars.push({ index: i, kind: 'memory', is64, prefetchable, size, address });
      if (is64) {
        bars.push(undefined);
        i++;
      }
    }
    this.#bars = bars;
    return bars;
  }

  /** Sets command register bits: memory and I/O decoding for the BARs it has, bus mastering (DMA, MSI). */
  async enable(options: { busMaster?: boolean } = {}): Promise<void> {
    const bars = await this.assignBars();
    let bits = 0;
    if (bars.some((b) => b?.kind === 'memory')) bits |= PciCommand.MEMORY;
    if (bars.some((b) => b?.kind === 'io')) bits |= PciCommand.IO;
    if (options.busMaster !== false) bits |= PciCommand.BUS_MASTER;
    const command = await this.config.readU16(PciConfigReg.COMMAND);
    await this.config.writeU16(PciConfigReg.COMMAND, command | bits);
  }

  /** The capability list (empty when the status register says there is none). */
  async capabilities(): Promise<PciCapability[]> {
    const cfg = this.config;
    const status = await cfg.readU16(PciConfigReg.STATUS);
    if ((status & PCI_STATUS_CAP_LIST) === 0) return [];
    const caps: PciCapability[] = [];
    let ptr = (await cfg.readU8(PciConfigReg.CAPABILITIES_PTR)) & 0xfc;
    while (ptr !== 0) {
      if (ptr < 0x40 || caps.length >= MAX_CAPABILITIES) {
        throw new PciScanError(
          'BAD_CAPABILITY_LIST',
          `${this.location}: capability pointer 0x${ptr.toString(16)} is invalid or the list loops`,
          ptr,
        );
      }
      const header = await cfg.readU16(ptr);
      caps.push({ id: header & 0xff, offset: ptr });
      ptr = (header >> 8) & 0xfc;
    }
    return caps;
  }
}

export class PciBus {
  readonly io: PortIo;
  readonly bus: number;
  #mmioNext: number;
  readonly #mmioLimit: number;
  #ioNext: number;
  readonly #ioLimit: number;

  constructor(io: PortIo, options: PciBusOptions = {}, bus = 0) {
    this.io = io;
    this.bus = bus;
    this.#mmioNext = options.mmioBase ?? PCI_DEFAULT_MMIO_BASE;
    this.#mmioLimit = options.mmioLimit ?? PCI_DEFAULT_MMIO_LIMIT;
    this.#ioNext = options.ioBase ?? PCI_DEFAULT_IO_BASE;
    this.#ioLimit = options.ioLimit ?? PCI_DEFAULT_IO_LIMIT;
  }

  /** Every function present on the bus (vendor id not 0xFFFF), in slot/function order. */
  async scan(): Promise<PciFunction[]> {
    const found: PciFunction[] = [];
    for (let device = 0; device < 32; device++) {
      const fn0 = new PciConfig(this.io, { bus: this.bus, device, fn: 0 });
      const id0 = await fn0.readU32(PciConfigReg.VENDOR_ID);
      if ((id0 & 0xffff) === 0xffff) continue;
      const headerType = await fn0.readU8(PciConfigReg.HEADER_TYPE);
      const fns = (headerType & PCI_HEADER_TYPE_MULTI_FUNCTION) !== 0 ? 8 : 1;
      for (let fn = 0; fn < fns; fn++) {
        const cfg = fn === 0 ? fn0 : new PciConfig(this.io, { bus: this.bus, device, fn });
        const f = await this.#read(cfg);
        if (f !== undefined) found.push(f);
      }
    }
    return found;
  }

  async #read(cfg: PciConfig): Promise<PciFunction | undefined> {
    const [id, classRev, header, subsystem] = await Promise.all([
      cfg.readU32(PciConfigReg.VENDOR_ID),
      cfg.readU32(PciConfigReg.REVISION_ID),
      cfg.readU8(PciConfigReg.HEADER_TYPE),
      cfg.readU32(PciConfigReg.SUBSYSTEM_VENDOR_ID),
    ]);
    if ((id & 0xffff) === 0xffff) return undefined;
    return new PciFunction(this, cfg, {
      vendorId: id & 0xffff,
      deviceId: id >>> 16,
      revision: classRev & 0xff,
      classCode: classRev >>> 8,
      headerType: header,
      subsystemVendorId: subsystem & 0xffff,
      subsystemId: subsystem >>> 16,
    });
  }

  /** @internal */
  _allocMmio(size: number, where: string, bar: number): number {
    const address = Math.ceil(this.#mmioNext / size) * size;
    if (address + size > this.#mmioLimit) {
      throw new PciScanError(
        'BAR_SPACE_EXHAUSTED',
        `${where}: no room for BAR${bar} (${size} bytes) below 0x${this.#mmioLimit.toString(16)}`,
        size,
      );
    }
    this.#mmioNext = address + size;
    return address;
  }

  /** @internal */
  _allocIo(size: number, where: string, bar: number): number {
    const address = Math.ceil(this.#ioNext / size) * size;
    if (address + size > this.#ioLimit) {
      throw new PciScanError(
        'BAR_SPACE_EXHAUSTED',
        `${where}: no room for I/O BAR${bar} (${size} bytes) below 0x${this.#ioLimit.toString(16)}`,
        size,
      );
    }
    this.#ioNext = address + size;
    return address;
  }
}
