/**
 * PCI configuration space through configuration mechanism #1 (PCI Local Bus 3.0 §3.2.2.3.2): write
 * `0x80000000 | bus << 16 | device << 11 | function << 8 | (register & 0xFC)` to port 0xCF8, then access the
 * dword at port 0xCFC (bytes and words at 0xCFC + (register & 3)).
 *
 * Each access enqueues its 0xCF8 write and its 0xCFC access in the same tick, so on a pipelined link (qtest) the
 * pair reaches the machine back to back even while other accesses are in flight.
 */

/** The port accesses this needs (a {@link QtestLink} has them). */
export interface PortIo {
  inb(port: number): Promise<number>;
  inw(port: number): Promise<number>;
  inl(port: number): Promise<number>;
  outb(port: number, value: number): Promise<void>;
  outw(port: number, value: number): Promise<void>;
  outl(port: number, value: number): Promise<void>;
}

/** Memory-space accesses (MMIO BARs); a {@link QtestLink} has them. */
export interface MemIo {
  readb(addr: number): Promise<number>;
  readw(addr: number): Promise<number>;
  readl(addr: number): Promise<number>;
  writeb(addr: number, value: number): Promise<void>;
  writew(addr: number, value: number): Promise<void>;
  writel(addr: number, value: number): Promise<void>;
}

export const PCI_CONFIG_ADDRESS_PORT = 0xcf8;
export const PCI_CONFIG_DATA_PORT = 0xcfc;

/** Type-0 header offsets and bits (PCI Local Bus 3.0 §6.2). */
export const PciConfigReg = {
  VENDOR_ID: 0x00,
  DEVICE_ID: 0x02,
  COMMAND: 0x04,
  STATUS: 0x06,
  REVISION_ID: 0x08,
  /** prog-if 0x09, subclass 0x0a, base class 0x0b. */
  CLASS_PROG: 0x09,
  HEADER_TYPE: 0x0e,
  BAR0: 0x10,
  SUBSYSTEM_VENDOR_ID: 0x2c,
  SUBSYSTEM_ID: 0x2e,
  CAPABILITIES_PTR: 0x34,
  INTERRUPT_LINE: 0x3c,
  INTERRUPT_PIN: 0x3d,
} as const;

export const PciCommand = {
  IO: 0x1,
  MEMORY: 0x2,
  BUS_MASTER: 0x4,
  INTX_DISABLE: 0x400,
} as const;

/** Status register bit 4: the capability list at CAPABILITIES_PTR is valid. */
export const PCI_STATUS_CAP_LIST = 0x10;
/** Header type bit 7: a multi-function device. */
export const PCI_HEADER_TYPE_MULTI_FUNCTION = 0x80;

/** Capability ids (PCI Code and ID Assignment). */
export const PciCapId = {
  MSI: 0x05,
  VENDOR: 0x09,
  PCIE: 0x10,
  MSIX: 0x11,
} as const;

export interface PciAddress {
  readonly bus: number;
  readonly device: number;
  readonly fn: number;
}

/** `bb:dd.f` in hex, as lspci prints it. */
export function formatPciAddress(a: PciAddress): string {
  const h = (v: number, w: number) => v.toString(16).padStart(w, '0');
  return `${h(a.bus, 2)}:${h(a.device, 2)}.${a.fn}`;
}

export class PciConfigError extends Error {
  readonly code: 'INVALID_ARGUMENT';
  constructor(message: string) {
    super(message);
    this.name = 'PciConfigError';
    this.code = 'INVALID_ARGUMENT';
  }
}

/** The configuration space (256 bytes) of one function, through conf1 ports. */
export class PciConfig {
  readonly io: PortIo;
  readonly address: PciAddress;
  readonly #base: number;

  constructor(io: PortIo, address: PciAddress) {
    const { bus, device, fn } = address;
    if (!inRange(bus, 255) || !inRange(device, 31) || !inRange(fn, 7)) {
      throw new PciConfigError(`PCI address ${bus}:${device}.${fn} is out of range`);
    }
    this.io = io;
    this.address = address;
    this.#base = (0x8000_0000 | (bus << 16) | (device << 11) | (fn << 8)) >>> 0;
  }

  readU8(reg: number): Promise<number> {
    this.#check(reg, 1);
    const select = this.#select(reg);
    const value = this.io.inb(PCI_CONFIG_DATA_PORT + (reg & 3));
    return Promise.all([select, value]).then(([, v]) => v);
  }

  readU16(reg: number): Promise<number> {
    this.#check(reg, 2);
    const select = this.#select(reg);
    const value = this.io.inw(PCI_CONFIG_DATA_PORT + (reg & 2));
    return Promise.all([select, value]).then(([, v]) => v);
  }

  readU32(reg: number): Promise<number> {
    this.#check(reg, 4);
    const select = this.#select(reg);
    const value = this.io.inl(PCI_CONFIG_DATA_PORT);
    return Promise.all([select, value]).then(([, v]) => v);
  }

  writeU8(reg: number, value: number): Promise<void> {
    this.#check(reg, 1);
    const select = this.#select(reg);
    const done = this.io.outb(PCI_CONFIG_DATA_PORT + (reg & 3), value);
    return Promise.all([select, done]).then(() => undefined);
  }

  writeU16(reg: number, value: number): Promise<void> {
    this.#check(reg, 2);
    const select = this.#select(reg);
    const done = this.io.outw(PCI_CONFIG_DATA_PORT + (reg & 2), value);
    return Promise.all([select, done]).then(() => undefined);
  }

  writeU32(reg: number, value: number): Promise<void> {
    this.#check(reg, 4);
    const select = this.#select(reg);
    const done = this.io.outl(PCI_CONFIG_DATA_PORT, value >>> 0);
    return Promise.all([select, done]).then(() => undefined);
  }

  #select(reg: number): Promise<void> {
    return this.io.outl(PCI_CONFIG_ADDRESS_PORT, (this.#base | (reg & 0xfc)) >>> 0);
  }

  #check(reg: number, size: number): void {
    if (!Number.isInteger(reg) || reg < 0 || reg + size > 256 || reg % size !== 0) {
      throw new PciConfigError(`config register ${reg} is not a naturally aligned ${size}-byte register`);
    }
  }
}

function inRange(v: number, max: number): boolean {
  return Number.isInteger(v) && v >= 0 && v <= max;
}
