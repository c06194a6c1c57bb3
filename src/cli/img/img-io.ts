/** Where `ringvm img` writes: stdout, stderr, and whether stderr is a terminal (for `convert -p`). */
export interface ImgIo {
  readonly out: (s: string) => void;
  readonly err: (s: string) => void;
  /** stderr is a terminal (the progress bar is drawn only then). Default false. */
  readonly errIsTTY?: boolean;
  /** stderr's width in columns, when it is a terminal. */
  readonly columns?: number;
}
